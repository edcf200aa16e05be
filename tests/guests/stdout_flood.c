/*
 * Attacks: output size. Writes 64 KiB blocks of 'A' to stdout forever and ignores
 * every write error, so it never stops by itself.
 * Expected: the host's max_output_bytes cap ends the job as an output-limit failure
 * (or, if the host only refuses further writes, the deadline ends it); the worker
 * never buffers more than the cap.
 */
#include <string.h>
#include <unistd.h>

static char block[64 * 1024];

int main(void) {
    memset(block, 'A', sizeof block);
    /* write(2), not stdio: every iteration reaches the host, and an error does not
     * stick the way a FILE's error flag would. */
    for (;;)
        (void)write(STDOUT_FILENO, block, sizeof block);
}
