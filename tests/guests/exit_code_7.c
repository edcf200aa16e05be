/*
 * Attacks: nothing; checks exit-status plumbing. Writes "bye\n" to stdout and exits 7.
 * Expected: the job ends as a non-zero exit with code 7 (not a trap) and its stdout,
 * "bye\n", is still delivered: output written before exit must not be lost.
 */
#include <stdio.h>

int main(void) {
    fputs("bye\n", stdout);
    return 7; /* returning from main flushes stdout, then proc_exit(7) */
}
