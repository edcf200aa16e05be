/*
 * Attacks: stderr capture. Writes 100 MiB to stderr in 64 KiB blocks, then "done\n" to
 * stdout, and exits 0. Write errors on stderr are ignored.
 * Expected: the host keeps only a bounded prefix of stderr (discarding the rest, not
 * buffering 100 MiB), and the job succeeds with stdout exactly "done\n".
 */
#include <stdio.h>
#include <string.h>

#define BLOCK (64 * 1024)
#define TOTAL (100u * 1024 * 1024)

static char block[BLOCK];

int main(void) {
    memset(block, 'E', sizeof block);
    for (unsigned written = 0; written < TOTAL; written += BLOCK) {
        (void)fwrite(block, 1, sizeof block, stderr);
        clearerr(stderr); /* a refused write must not stop the next ones */
    }
    fputs("done\n", stdout);
    return 0;
}
