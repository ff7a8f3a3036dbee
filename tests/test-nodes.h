/* What the suites that start several llepd nodes on loopback share (test-nodes.c). */
#ifndef LLEP_TEST_NODES_H
#define LLEP_TEST_NODES_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral range (32768
 * and up on Linux), so that no outgoing connection (of the daemons or anything else) takes it
 * between this check and a daemon's bind, and a daemon dialling a node that is not up yet
 * cannot connect to itself. Aborts the test when none is found. */
uint16_t llep_test_free_port(void);

/* n distinct free ports into ports[n] and the --peers list of nodes 0..n-1 on them into
 * peers ("0=127.0.0.1:P0,1=127.0.0.1:P1,..."). */
void llep_test_peers(int n, uint16_t *ports, char *peers, size_t len);

/* The llepctl of this build (the test runs from build/tests, llepctl is in build/tools). */
void llep_test_llepctl(char *path, size_t len);

/* SIGKILLs and reaps the pids[0..n) that are > 0, then removes dir and what it holds. */
void llep_test_kill_nodes(pid_t *pids, int n, const char *dir);

#endif
