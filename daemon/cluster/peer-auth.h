/* Authentication of peer links with a secret every node shares (--peer-secret-file).
 *
 * At link set-up the dialling node sends a random nonce in its PeerHello; the answering node
 * replies with a nonce of its own and an HMAC-SHA-256, under the secret, of both nonces and
 * both node ids; the dialling node checks it and answers with its own HMAC (PeerAuth), which
 * the answering node checks before the link counts as up. Each side thus shows it holds the
 * secret without sending it, and a recorded exchange cannot be replayed (fresh nonces). Later
 * traffic is neither authenticated nor encrypted: the links belong on a private network (or
 * inside WireGuard or IPsec). */
#ifndef LLEPD_PEER_AUTH_H
#define LLEPD_PEER_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LLEP_PEER_NONCE_BYTES 32u
#define LLEP_PEER_MAC_BYTES 32u
#define LLEP_PEER_SECRET_MIN 16u
#define LLEP_PEER_SECRET_MAX 4096u

typedef struct llep_peer_secret {
    uint8_t key[LLEP_PEER_SECRET_MAX];
    size_t len;
} llep_peer_secret;

/* Reads the secret: the file's bytes without trailing blanks and newlines, 16 to 4096 of them.
 * The file must be a regular file that neither group nor others may read. Returns 0, or a
 * negative errno with a sentence naming the file in err. */
int llep__peer_secret_load(const char *path, llep_peer_secret *ret, char *err, size_t errlen);

/* Fills out with random bytes (libsodium). Returns 0, or -EIO when the library cannot start. */
int llep__peer_nonce(uint8_t out[LLEP_PEER_NONCE_BYTES]);

/* The MAC one side sends: `dialler` true for the dialling node's (PeerAuth), false for the
 * answering node's (PeerHelloReply). */
void llep__peer_mac(const llep_peer_secret *s, bool dialler, const uint8_t *nonce_dial,
                    const uint8_t *nonce_reply, uint32_t dial_id, uint32_t reply_id,
                    uint8_t out[LLEP_PEER_MAC_BYTES]);

/* Whether mac[len] is that MAC (compared in constant time). */
bool llep__peer_mac_ok(const llep_peer_secret *s, bool dialler, const uint8_t *nonce_dial,
                       const uint8_t *nonce_reply, uint32_t dial_id, uint32_t reply_id,
                       const uint8_t *mac, size_t len);

#endif
