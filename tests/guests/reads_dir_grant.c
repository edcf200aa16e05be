/*
 * Attacks: nothing; the positive control for read_outside_grant. Reads
 * /data/hello.txt from a preopened directory and copies it to stdout.
 * Expected: with a directory granted at /data holding hello.txt, succeeds (exit 0)
 * and stdout equals the file's content. Without the grant, the open fails: the
 * error goes to stderr and it exits 1.
 */
#include <stdio.h>

static char buf[64 * 1024];

int main(void) {
    FILE *f = fopen("/data/hello.txt", "r");
    if (f == NULL) {
        perror("/data/hello.txt");
        return 1;
    }
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        if (fwrite(buf, 1, n, stdout) != n) {
            perror("write");
            return 1;
        }
    }
    if (ferror(f)) {
        perror("/data/hello.txt");
        return 1;
    }
    fclose(f);
    return fflush(stdout) == 0 ? 0 : 1;
}
