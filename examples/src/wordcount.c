/*
 * wordcount: counts lines, words and bytes of stdin like `wc` and prints
 * "<lines> <words> <bytes>\n".
 *
 * Same definitions as POSIX wc in the C locale: a line is a '\n' (so a last line with
 * no newline is not counted), a word is a maximal run of bytes that are not
 * space, \t, \n, \v, \f or \r. Every other byte is a word byte, whatever the locale:
 * GNU wc also skips non-printable bytes, so its word count can be lower on binary or
 * non-ASCII input. Counts are 64-bit: inputs can exceed 4 GiB.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>

static unsigned char buf[64 * 1024];

/* A table lookup beats isspace() here: no locale, no call, and it is the hot loop. */
static unsigned char is_space[256] = {
    [' '] = 1, ['\t'] = 1, ['\n'] = 1, ['\v'] = 1, ['\f'] = 1, ['\r'] = 1,
};

int main(void) {
    uint64_t lines = 0, words = 0, bytes = 0;
    /* Carried across blocks so a word split by a block boundary counts once. */
    int in_word = 0;
    size_t n;

    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
        bytes += n;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = buf[i];
            lines += (c == '\n');
            if (is_space[c]) {
                in_word = 0;
            } else if (!in_word) {
                in_word = 1;
                words++;
            }
        }
    }
    if (ferror(stdin)) {
        perror("wordcount: read");
        return 1;
    }
    printf("%" PRIu64 " %" PRIu64 " %" PRIu64 "\n", lines, words, bytes);
    if (fflush(stdout) != 0) {
        perror("wordcount: write");
        return 1;
    }
    return 0;
}
