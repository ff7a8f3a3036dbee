/* Peer link authentication: the shared secret and the HMACs of the hello (peer-auth.h). */
#include "peer-auth.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int llep__peer_secret_load(const char *path, llep_peer_secret *ret, char *err, size_t errlen) {
    struct stat st;
    uint8_t extra;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW), r = 0;

    memset(ret, 0, sizeof(*ret));
    if (fd < 0) {
        r = -errno;
        snprintf(err, errlen, "peer secret file %s: %s", path, strerror(errno));
        return r;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "peer secret file %s is not a regular file", path);
        r = -EINVAL;
    } else if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        snprintf(err, errlen, "peer secret file %s may be read or written by others (mode %04o): "
                 "chmod 600 it", path, (unsigned)(st.st_mode & 07777));
        r = -EPERM;
    }
    ssize_t n = r == 0 ? read(fd, ret->key, sizeof(ret->key)) : 0;
    if (r == 0 && (n < 0 || read(fd, &extra, 1) != 0)) {
        snprintf(err, errlen, "peer secret file %s: %s", path,
                 n < 0 ? strerror(errno) : "longer than 4096 bytes");
        r = n < 0 ? -EIO : -EINVAL;
    }
    close(fd);
    if (r < 0)
        return r;
    /* Editors add a newline; `head -c 32 /dev/urandom | base64 > f` adds one too. */
    while (n > 0 && (ret->key[n - 1] == '\n' || ret->key[n - 1] == '\r' ||
                     ret->key[n - 1] == ' ' || ret->key[n - 1] == '\t'))
        n--;
    if ((size_t)n < LLEP_PEER_SECRET_MIN) {
        snprintf(err, errlen, "peer secret file %s holds %zd bytes; a secret needs at least %u",
                 path, n, LLEP_PEER_SECRET_MIN);
        sodium_memzero(ret, sizeof(*ret));
        return -EINVAL;
    }
    ret->len = (size_t)n;
    return 0;
}

int llep__peer_nonce(uint8_t out[LLEP_PEER_NONCE_BYTES]) {
    if (sodium_init() < 0)
        return -EIO;
    randombytes_buf(out, LLEP_PEER_NONCE_BYTES);
    return 0;
}

static void put_u32(uint8_t *b, uint32_t v) {
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(v >> (8 * i));
}

void llep__peer_mac(const llep_peer_secret *s, bool dialler, const uint8_t *nonce_dial,
                    const uint8_t *nonce_reply, uint32_t dial_id, uint32_t reply_id,
                    uint8_t out[LLEP_PEER_MAC_BYTES]) {
    /* Distinct labels, so one side's MAC can never stand in for the other's. */
    static const char dial_label[] = "llep peer link: dialling node";
    static const char reply_label[] = "llep peer link: answering node";
    crypto_auth_hmacsha256_state st;
    uint8_t ids[8];

    put_u32(ids, dial_id);
    put_u32(ids + 4, reply_id);
    crypto_auth_hmacsha256_init(&st, s->key, s->len);
    if (dialler)
        crypto_auth_hmacsha256_update(&st, (const uint8_t *)dial_label, sizeof(dial_label));
    else
        crypto_auth_hmacsha256_update(&st, (const uint8_t *)reply_label, sizeof(reply_label));
    crypto_auth_hmacsha256_update(&st, nonce_dial, LLEP_PEER_NONCE_BYTES);
    crypto_auth_hmacsha256_update(&st, nonce_reply, LLEP_PEER_NONCE_BYTES);
    crypto_auth_hmacsha256_update(&st, ids, sizeof(ids));
    crypto_auth_hmacsha256_final(&st, out);
}

bool llep__peer_mac_ok(const llep_peer_secret *s, bool dialler, const uint8_t *nonce_dial,
                       const uint8_t *nonce_reply, uint32_t dial_id, uint32_t reply_id,
                       const uint8_t *mac, size_t len) {
    uint8_t want[LLEP_PEER_MAC_BYTES];

    if (!mac || len != LLEP_PEER_MAC_BYTES)
        return false;
    llep__peer_mac(s, dialler, nonce_dial, nonce_reply, dial_id, reply_id, want);
    return sodium_memcmp(want, mac, LLEP_PEER_MAC_BYTES) == 0;
}
