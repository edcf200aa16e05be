/*
 * Attacks: environment confinement. Looks for HOME, PATH and SECRET, none of which
 * the job grants (the host process has the first two, and tests may set SECRET in
 * the worker's own environment).
 * Expected: the guest sees none of them, prints "no env" and exits 4. If any is
 * visible it prints "LEAK" and exits 0, which tests must treat as a failure.
 * The names that leaked go to stderr for diagnosis.
 */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    static const char *const names[] = {"HOME", "PATH", "SECRET"};
    int leaked = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (getenv(names[i]) != NULL) {
            fprintf(stderr, "%s is visible\n", names[i]);
            leaked = 1;
        }
    }
    if (leaked) {
        puts("LEAK");
        return 0;
    }
    puts("no env");
    return 4;
}
