/* The cluster settings: the peers list, the peer listening address, and what the rest of
 * llepd asks of them (config.h, config-keys.h). */
#include "config-keys.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parse-number.h"

/* HOST:PORT with HOST a numeric IPv4 address or [IPv6]. Names are not resolved: a daemon
 * must not block on DNS at start, and peers compare addresses as written. The reason for a
 * refusal goes into detail. */
static int parse_host_port(const char *s, size_t len, llep_peer_addr *ret, char *detail,
                           size_t detail_len) {
    char host[LLEP_PEER_HOST_MAX + 2], port[8];
    const char *colon;
    size_t hlen;
    uint32_t p;
    unsigned char bin[16];

    memset(ret, 0, sizeof(*ret));
    if (len && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close || close + 1 >= s + len || close[1] != ':') {
            snprintf(detail, detail_len, "an IPv6 address needs the form [ADDR]:PORT");
            return -EINVAL;
        }
        hlen = (size_t)(close - s - 1);
        colon = close + 1;
        ret->ipv6 = true;
        if (hlen == 0 || hlen >= sizeof(host)) {
            snprintf(detail, detail_len, "bad IPv6 address");
            return -EINVAL;
        }
        memcpy(host, s + 1, hlen);
    } else {
        colon = NULL;
        for (size_t i = len; i > 0; i--)
            if (s[i - 1] == ':') {
                colon = s + i - 1;
                break;
            }
        if (!colon) {
            snprintf(detail, detail_len, "missing ':PORT'");
            return -EINVAL;
        }
        hlen = (size_t)(colon - s);
        if (hlen == 0 || hlen >= sizeof(host)) {
            snprintf(detail, detail_len, "missing or overlong host");
            return -EINVAL;
        }
        memcpy(host, s, hlen);
    }
    host[hlen] = '\0';
    if (inet_pton(ret->ipv6 ? AF_INET6 : AF_INET, host, bin) != 1) {
        snprintf(detail, detail_len, "'%.*s' is not a numeric %s address", (int)hlen, host,
                 ret->ipv6 ? "IPv6" : "IPv4");
        return -EINVAL;
    }
    inet_ntop(ret->ipv6 ? AF_INET6 : AF_INET, bin, ret->host, sizeof(ret->host));
    size_t plen = len - (size_t)(colon + 1 - s);
    if (plen == 0 || plen >= sizeof(port)) {
        snprintf(detail, detail_len, "missing or overlong port");
        return -EINVAL;
    }
    memcpy(port, colon + 1, plen);
    port[plen] = '\0';
    if (llep__parse_u32(port, &p) < 0 || p < 1 || p > 65535) {
        snprintf(detail, detail_len, "port '%s' is not an integer from 1 to 65535", port);
        return -EINVAL;
    }
    ret->port = (uint16_t)p;
    return 0;
}

static int cmp_peer_id(const void *a, const void *b) {
    const llep_peer_addr *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

/* ID=HOST:PORT,... : every node, sorted by id; ids and addresses unique. All or nothing: a bad
 * entry leaves the list in force alone. */
int llep__config_set_peers(llep_config *c, const char *value) {
    llep_peer_addr list[LLEP_MAX_NODES];
    uint32_t n = 0;
    const char *p = value;

    for (;;) {
        const char *end = strchr(p, ','), *eq;
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char idtext[16];
        uint32_t id;

        if (n == LLEP_MAX_NODES) {
            snprintf(c->detail, sizeof(c->detail), "more than %u nodes", LLEP_MAX_NODES);
            return -EINVAL;
        }
        eq = memchr(p, '=', len);
        if (len == 0 || !eq) {
            snprintf(c->detail, sizeof(c->detail), "node %u: expected ID=HOST:PORT", n + 1);
            return -EINVAL;
        }
        size_t idlen = (size_t)(eq - p);
        if (idlen == 0 || idlen >= sizeof(idtext)) {
            snprintf(c->detail, sizeof(c->detail), "node %u: missing or overlong ID", n + 1);
            return -EINVAL;
        }
        memcpy(idtext, p, idlen);
        idtext[idlen] = '\0';
        if (llep__parse_u32(idtext, &id) < 0 || id > LLEP_NODE_ID_MAX) {
            snprintf(c->detail, sizeof(c->detail), "node %u: ID '%s' is not an integer from 0 "
                     "to %u", n + 1, idtext, LLEP_NODE_ID_MAX);
            return -EINVAL;
        }
        char why[120] = "";
        if (parse_host_port(eq + 1, len - idlen - 1, &list[n], why, sizeof(why)) < 0) {
            snprintf(c->detail, sizeof(c->detail), "node %u: %s", id, why);
            return -EINVAL;
        }
        list[n++].id = id;
        if (!end)
            break;
        p = end + 1;
    }
    qsort(list, n, sizeof(list[0]), cmp_peer_id);
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = i + 1; j < n; j++) {
            if (list[i].id == list[j].id) {
                snprintf(c->detail, sizeof(c->detail), "node id %u appears twice", list[i].id);
                return -EINVAL;
            }
            if (list[i].port == list[j].port && strcmp(list[i].host, list[j].host) == 0) {
                snprintf(c->detail, sizeof(c->detail), "nodes %u and %u have the same address",
                         list[i].id, list[j].id);
                return -EINVAL;
            }
        }
    memcpy(c->peers, list, n * sizeof(list[0]));
    c->npeers = n;
    return 0;
}

int llep__config_set_listen_peers(llep_config *c, const char *value) {
    llep_peer_addr a;
    int r = parse_host_port(value, strlen(value), &a, c->detail, sizeof(c->detail));

    if (r < 0)
        return r;
    c->listen_peers = a;
    c->have_listen_peers = true;
    return 0;
}

/* The metrics endpoint's address: the same numeric HOST:PORT as the peer addresses. */
int llep__config_set_metrics_listen(llep_config *c, const char *value) {
    llep_peer_addr a;
    int r = parse_host_port(value, strlen(value), &a, c->detail, sizeof(c->detail));

    if (r < 0)
        return r;
    c->metrics_listen = a;
    c->have_metrics_listen = true;
    return 0;
}

const llep_peer_addr *llep__config_listen_addr(const llep_config *c) {
    if (!c->have_node_id)
        return NULL;
    if (c->have_listen_peers)
        return &c->listen_peers;
    for (uint32_t i = 0; i < c->npeers; i++)
        if (c->peers[i].id == c->node_id)
            return &c->peers[i];
    return NULL;
}

void llep__peer_addr_format(const llep_peer_addr *a, char *buf, size_t len) {
    snprintf(buf, len, a->ipv6 ? "[%s]:%u" : "%s:%u", a->host, (unsigned)a->port);
}

uint64_t llep__peers_hash(const llep_config *c) {
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    char entry[LLEP_PEER_HOST_MAX + 32], addr[LLEP_PEER_HOST_MAX + 16];

    for (uint32_t i = 0; i < c->npeers; i++) {
        llep__peer_addr_format(&c->peers[i], addr, sizeof(addr));
        snprintf(entry, sizeof(entry), "%u=%s,", c->peers[i].id, addr);
        for (const char *p = entry; *p; p++) {
            h ^= (unsigned char)*p;
            h *= UINT64_C(0x100000001b3);
        }
    }
    return h;
}
