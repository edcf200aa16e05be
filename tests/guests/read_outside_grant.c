/*
 * Attacks: filesystem confinement. Tries to open /etc/passwd directly, through a
 * relative path climbing above the working directory, and by climbing out of the
 * granted /data directory.
 * Expected: every open is denied (wasmtime only exposes preopened directories and
 * rejects paths escaping them), so it prints "denied" and exits 3. If any open
 * succeeds it prints "LEAK" and exits 0, which tests must treat as a failure.
 * Per-path errors go to stderr for diagnosis.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

int main(void) {
    static const char *const paths[] = {
        "/etc/passwd",
        "../../etc/passwd",
        "/data/../../etc/passwd",
    };
    int leaked = 0;
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        FILE *f = fopen(paths[i], "r");
        if (f != NULL) {
            fprintf(stderr, "opened %s\n", paths[i]);
            fclose(f);
            leaked = 1;
        } else {
            fprintf(stderr, "%s: %s\n", paths[i], strerror(errno));
        }
    }
    if (leaked) {
        puts("LEAK");
        return 0;
    }
    puts("denied");
    return 3;
}
