/* Loopback ports for tests that start llepd peers (test-ports.c). */
#ifndef LLEP_TEST_PORTS_H
#define LLEP_TEST_PORTS_H

#include <stdint.h>

/* A port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral range (32768
 * and up on Linux), so that no outgoing connection (of the daemons or anything else) takes it
 * between this check and a daemon's bind, and a daemon dialling a node that is not up yet
 * cannot connect to itself. Aborts the test when none is found. */
uint16_t llep_test_free_port(void);

#endif
