/*
 * uppercase: ASCII uppercase filter, stdin -> stdout.
 *
 * Streams in fixed 64 KiB blocks so memory use is constant whatever the input size.
 * Bytes outside 'a'..'z' (including UTF-8 multibyte sequences) pass through untouched,
 * so valid UTF-8 in gives valid UTF-8 out.
 */
#include <stdio.h>

/* Static, not on the stack: the default wasm stack is only 64 KiB. */
static unsigned char buf[64 * 1024];

int main(void) {
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
        for (size_t i = 0; i < n; i++) {
            /* One unsigned compare instead of two: 'a'..'z' maps to 0..25. */
            if ((unsigned char)(buf[i] - 'a') < 26)
                buf[i] -= 'a' - 'A';
        }
        if (fwrite(buf, 1, n, stdout) != n) {
            perror("uppercase: write");
            return 1;
        }
    }
    if (ferror(stdin)) {
        perror("uppercase: read");
        return 1;
    }
    if (fflush(stdout) != 0) {
        perror("uppercase: write");
        return 1;
    }
    return 0;
}
