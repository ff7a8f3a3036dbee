/* A slow group database for test-service (peercred): preloaded into llepd, it makes every
 * getgrnam_r() and getgrnam() take $LLEP_TEST_SLOW_NSS_MS milliseconds before the real lookup,
 * as an LDAP directory that answers slowly would. The test checks that llepd keeps serving
 * other connections meanwhile, so the lookup must not run on its event-loop thread. */
#include <dlfcn.h>
#include <errno.h>
#include <grp.h>
#include <stdlib.h>
#include <time.h>

static void slow(void) {
    const char *ms = getenv("LLEP_TEST_SLOW_NSS_MS");
    long v = ms ? atol(ms) : 0;
    struct timespec ts = { v / 1000, (v % 1000) * 1000000L };

    while (v > 0 && nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Exported despite -fvisibility=hidden: they must interpose on libc's. */
#define SHIM __attribute__((visibility("default")))

SHIM int getgrnam_r(const char *name, struct group *grp, char *buf, size_t len,
               struct group **result) {
    int (*real)(const char *, struct group *, char *, size_t, struct group **) =
        (int (*)(const char *, struct group *, char *, size_t, struct group **))dlsym(
            RTLD_NEXT, "getgrnam_r");

    slow();
    return real(name, grp, buf, len, result);
}

SHIM struct group *getgrnam(const char *name) {
    struct group *(*real)(const char *) =
        (struct group * (*)(const char *)) dlsym(RTLD_NEXT, "getgrnam");

    slow();
    return real(name);
}
