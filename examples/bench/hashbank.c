/*
 * hashbank: the large module of the cold-start benchmark (worker/benches/cold_start).
 *
 * A bank of 4096 distinct hash rounds, each a loop over the input that mixes four
 * 32-bit lanes with its own constants, rotations and choice of operations. The rounds
 * are written once, as the ROUND macro, and expanded 4096 times by the preprocessor
 * with the round's number n; every constant and every choice of operation is a
 * compile-time expression of n, so each round compiles to its own code (about 360
 * bytes of wasm: a 1.46 MB code section in all) and no generator or generated file is
 * needed. It takes clang about a minute, so examples/build.sh builds it only when
 * asked (`bash examples/build.sh --bench`; the benchmark asks).
 *
 * main reads stdin (up to 64 KiB), seeds a state with its FNV-1a hash, runs 64 rounds
 * chosen by the state through a table of function pointers (so every round is
 * reachable and kept), and prints the state as 8 hex digits and a newline. A tiny
 * input runs in well under a millisecond: what the benchmark times is loading the
 * module's code, not running it.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

static inline uint32_t rotl(uint32_t x, unsigned r) {
    r &= 31;
    return (x << r) | (x >> ((32 - r) & 31));
}

/* Constant i of round n: a 32-bit mix of n and i, folded by the compiler. */
#define K(n, i)                                                                        \
    ((uint32_t)(((uint32_t)(n) * 2654435761u) ^ ((uint32_t)(i) * 0x9E3779B9u) ^         \
                (((uint32_t)(n) + (i)) << (((i) * 7 + (n)) % 23)) ^ 0x5bd1e995u))

/* Operation k of round n on lanes x and y: one of four, chosen by bits of n. */
#define OP(n, k, x, y)                                                                 \
    ((((n) >> ((k) % 12)) & 3) == 0   ? rotl((x) + (y), ((n) + (k)) % 31 + 1)           \
     : (((n) >> ((k) % 12)) & 3) == 1 ? (x) * ((y) | 1u) + K(n, k)                     \
     : (((n) >> ((k) % 12)) & 3) == 2 ? (x) ^ ((y) >> (((n) ^ (k)) % 29 + 1))            \
                                      : ((x) + K(n, k)) * (rotl(y, (k) + 3) | 1u))

#define ROUND(n)                                                                       \
    static uint32_t round_##n(const unsigned char *p, size_t len, uint32_t s) {         \
        uint32_t a = s ^ K(n, 1), b = s + K(n, 2), c = rotl(s, (n) % 31 + 1) ^ K(n, 3);  \
        uint32_t d = ~s ^ K(n, 4);                                                      \
        for (size_t i = 0; i < len; i++) {                                             \
            uint32_t x = p[i] ^ (uint32_t)i;                                           \
            a += x * K(n, 5);                                                          \
            a = OP(n, 0, a, b);                                                        \
            b ^= OP(n, 1, a, c);                                                       \
            c += OP(n, 2, b, d);                                                       \
            d = OP(n, 3, d, a) + K(n, 6);                                              \
            a ^= OP(n, 4, c, x);                                                       \
            b = OP(n, 5, b, d) ^ K(n, 7);                                              \
            c = OP(n, 6, c, a);                                                        \
            d += OP(n, 7, a, b);                                                       \
            a = OP(n, 8, a, d) + x;                                                    \
            b += OP(n, 9, c, a);                                                       \
            c ^= OP(n, 10, d, b) + K(n, 8);                                            \
            d = OP(n, 11, d, c);                                                       \
            a = OP(n, 13, a, c) ^ K(n, 10);                                            \
            b ^= OP(n, 14, d, x);                                                      \
        }                                                                              \
        return OP(n, 12, a ^ c, b ^ d) ^ K(n, 9);                                      \
    }

/* Sixteen expansions of m, appending one hex digit to p; one macro per level because
 * a macro is not expanded again inside its own expansion. */
#define HEX16(m, p)                                                                    \
    m(p##0) m(p##1) m(p##2) m(p##3) m(p##4) m(p##5) m(p##6) m(p##7)                    \
    m(p##8) m(p##9) m(p##a) m(p##b) m(p##c) m(p##d) m(p##e) m(p##f)
#define LEVEL1(m, p) HEX16(m, p)
#define LEVEL2(m, p)                                                                   \
    LEVEL1(m, p##0) LEVEL1(m, p##1) LEVEL1(m, p##2) LEVEL1(m, p##3)                    \
    LEVEL1(m, p##4) LEVEL1(m, p##5) LEVEL1(m, p##6) LEVEL1(m, p##7)                    \
    LEVEL1(m, p##8) LEVEL1(m, p##9) LEVEL1(m, p##a) LEVEL1(m, p##b)                    \
    LEVEL1(m, p##c) LEVEL1(m, p##d) LEVEL1(m, p##e) LEVEL1(m, p##f)
#define LEVEL3(m, p)                                                                   \
    LEVEL2(m, p##0) LEVEL2(m, p##1) LEVEL2(m, p##2) LEVEL2(m, p##3)                    \
    LEVEL2(m, p##4) LEVEL2(m, p##5) LEVEL2(m, p##6) LEVEL2(m, p##7)                    \
    LEVEL2(m, p##8) LEVEL2(m, p##9) LEVEL2(m, p##a) LEVEL2(m, p##b)                    \
    LEVEL2(m, p##c) LEVEL2(m, p##d) LEVEL2(m, p##e) LEVEL2(m, p##f)

#define ROUNDS 4096
LEVEL3(ROUND, 0x)

typedef uint32_t (*round_fn)(const unsigned char *, size_t, uint32_t);
#define ENTRY(n) round_##n,
static const round_fn rounds[ROUNDS] = {LEVEL3(ENTRY, 0x)};

static unsigned char buf[64 * 1024];

int main(void) {
    size_t len = fread(buf, 1, sizeof buf, stdin);
    uint32_t s = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        s = (s ^ buf[i]) * 16777619u;
    }
    for (uint32_t k = 0; k < 64; k++) {
        s = rounds[(s ^ k) % ROUNDS](buf, len, s + k);
    }
    printf("%08x\n", (unsigned)s);
    return 0;
}
