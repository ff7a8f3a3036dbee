/* Descriptors over the unix socket with SCM_RIGHTS (see fdpass.h). */
#include "fdpass.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Control buffer big enough for LLEP_FDPASS_MAX descriptors, aligned for cmsghdr. */
typedef union fd_control {
    char buf[CMSG_SPACE(sizeof(int) * LLEP_FDPASS_MAX)];
    struct cmsghdr align;
} fd_control;

ssize_t llep__send_with_fds(int sock, const void *buf, size_t len, const int *fds,
                            size_t nfds) {
    const char *p = buf;
    fd_control control;
    size_t sent = 0;

    if (len == 0 || len > SSIZE_MAX || nfds > LLEP_FDPASS_MAX || (nfds && !fds))
        return -EINVAL;
    while (sent < len) {
        struct iovec iov = { .iov_base = (void *)(p + sent), .iov_len = len - sent };
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
        ssize_t n;

        /* The descriptors ride on the first byte only; a short write sends the rest plain. */
        if (sent == 0 && nfds) {
            struct cmsghdr *cmsg;

            memset(&control, 0, sizeof(control));
            msg.msg_control = control.buf;
            msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
            cmsg = CMSG_FIRSTHDR(&msg);
            cmsg->cmsg_level = SOL_SOCKET;
            cmsg->cmsg_type = SCM_RIGHTS;
            cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
            memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
        }
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if ((errno == EAGAIN || errno == EWOULDBLOCK) && sent > 0)
                break;
            return -errno;
        }
        sent += (size_t)n;
    }
    return (ssize_t)sent;
}

/* Closes every descriptor in a received control message. */
static void close_received(struct msghdr *msg) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
        size_t n;

        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
            c->cmsg_len < CMSG_LEN(0))
            continue;
        n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;

            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            close(fd);
        }
    }
}

ssize_t llep__recv_with_fds(int sock, void *buf, size_t len, int *fds, size_t max_fds,
                            size_t *ret_nfds) {
    fd_control control;
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct msghdr msg = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buf,
        .msg_controllen = sizeof(control.buf),
    };
    size_t got = 0;
    ssize_t n;

    if (max_fds > LLEP_FDPASS_MAX)
        max_fds = LLEP_FDPASS_MAX;
    do
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;

    /* A truncated control message means descriptors were dropped by the kernel: whatever did
     * arrive is closed, and the peer is in breach of the protocol. */
    if (msg.msg_flags & MSG_CTRUNC) {
        close_received(&msg);
        return -EPROTO;
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        size_t k;

        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
            c->cmsg_len < CMSG_LEN(0)) {
            close_received(&msg);
            return -EPROTO;
        }
        k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        if (got + k > max_fds) {
            close_received(&msg);
            return -EPROTO;
        }
        memcpy(fds + got, CMSG_DATA(c), k * sizeof(int));
        got += k;
    }
    *ret_nfds = got;
    return n;
}
