/* Passing descriptors with a frame over the unix socket (SCM_RIGHTS).
 *
 * ArenaReply travels with three descriptors: the arena memfd, the submission eventfd and the
 * completion eventfd (proto/llep.proto). libuv can only pass its own handles, so llepd sends
 * this one frame with sendmsg() on the socket's fd, and the client receives its replies with
 * recvmsg(); both use these two functions. */
#ifndef LLEP_FDPASS_H
#define LLEP_FDPASS_H

#include <stddef.h>
#include <sys/types.h>

/* Most descriptors one message carries. */
#define LLEP_FDPASS_MAX 4u

/* Sends len bytes with nfds descriptors attached to the first byte, retrying on EINTR and
 * short writes. Never raises SIGPIPE. Returns the bytes sent: len on a blocking socket; on a
 * non-blocking one it stops when the socket is full and returns what went out (at least 1,
 * with the descriptors), so llepd can queue the rest as an ordinary write instead of blocking
 * its event loop on a client that does not read. -EAGAIN when nothing could be sent, -EINVAL
 * for len 0 or nfds over LLEP_FDPASS_MAX, or another negative errno from sendmsg(). */
ssize_t llep__send_with_fds(int sock, const void *buf, size_t len, const int *fds,
                            size_t nfds);

/* Receives up to len bytes and the descriptors that came with them (close-on-exec), like one
 * recvmsg(). Returns the byte count (0: the peer closed) and sets *ret_nfds, or a negative
 * errno. A peer that sends more descriptors than max_fds (or than LLEP_FDPASS_MAX), or
 * anything but SCM_RIGHTS, gets -EPROTO; every descriptor that did arrive is closed then, so a
 * hostile peer cannot make us leak them. */
ssize_t llep__recv_with_fds(int sock, void *buf, size_t len, int *fds, size_t max_fds,
                            size_t *ret_nfds);

#endif
