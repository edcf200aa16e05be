/*
 * env_echo: reports what the host passed in, so tests can check argument and
 * environment plumbing.
 *
 * Prints every argv entry as "arg[i]=<value>" (argv[0] included: whatever the host
 * chose as the program name), then for each of argv[1..] the environment variable of
 * that name as "NAME=value", or "NAME unset" when it is absent.
 */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        printf("arg[%d]=%s\n", i, argv[i]);
    for (int i = 1; i < argc; i++) {
        const char *value = getenv(argv[i]);
        if (value != NULL)
            printf("%s=%s\n", argv[i], value);
        else
            printf("%s unset\n", argv[i]);
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
