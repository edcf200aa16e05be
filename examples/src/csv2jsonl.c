/*
 * csv2jsonl: CSV with a header row on stdin -> JSON lines on stdout.
 *
 * Each data record becomes one line {"<key>":"<value>",...}, keys taken from the
 * header in order, every value a JSON string. Fields follow RFC 4180: a quoted field
 * may hold commas, line breaks and doubled quotes ("" -> ").
 *
 * Choices beyond RFC 4180, so the behaviour is predictable:
 *   - Records end at LF, CRLF or a lone CR (outside quotes). Blank lines are skipped,
 *     so a trailing newline or CRLF files never produce empty records.
 *   - A UTF-8 byte order mark at the very start is dropped (spreadsheets write one).
 *   - A '"' in the middle of an unquoted field is kept as a literal character.
 *   - Every record must have as many fields as the header; a JSON object cannot
 *     say what a missing or extra column means.
 *   - Output is always valid JSON: control characters, '"' and '\' are escaped and
 *     bytes that are not valid UTF-8 become U+FFFD.
 *   - Duplicate header names are emitted as they are (duplicate JSON keys).
 *
 * Memory is constant: input and output go through fixed 64 KiB buffers and one record
 * at a time is held, so a record is bounded (1 MiB of field data, 65536 fields).
 * Records are only written once complete, so on an error stdout holds exactly the
 * records before the bad one.
 *
 * Exit codes: 0 ok; 1 malformed CSV (unterminated quote, junk after a closing quote,
 * wrong field count); 2 a record over the bounds; 3 an I/O error. The reason goes to
 * stderr with the line number.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define IO_SIZE (64 * 1024)
#define RECORD_MAX_BYTES (1024 * 1024)
#define RECORD_MAX_FIELDS 65536

enum { EXIT_MALFORMED = 1, EXIT_TOO_LONG = 2, EXIT_IO = 3 };

/* One parsed record: field contents back to back, with each field's end offset. */
struct record {
    unsigned char data[RECORD_MAX_BYTES];
    uint32_t end[RECORD_MAX_FIELDS];
    size_t len;
    size_t nfields;
};

/* Static, not on the stack: the default wasm stack is only 64 KiB. The header keeps
 * its own record for the whole run while data records reuse the other. */
static struct record header, row;
static struct record *cur = &header;
static int have_header;

static unsigned char inbuf[IO_SIZE];
static unsigned char outbuf[IO_SIZE];
static size_t outlen;

/* Physical line (1-based) of the byte being parsed, and where the current record
 * began: a quoted field can span lines, and errors should point at the record. */
static unsigned long long line = 1, record_line = 1;
static int record_started;
/* Where the open quoted field began, for the unterminated-quote message. */
static unsigned long long quote_line = 1;

static void out_flush(void) {
    if (outlen > 0 && fwrite(outbuf, 1, outlen, stdout) != outlen) {
        perror("csv2jsonl: write");
        exit(EXIT_IO);
    }
    outlen = 0;
}

/* Before failing, pass on the records that were complete: they are correct output. */
static void fail(int code, const char *what) {
    out_flush();
    fflush(stdout);
    fprintf(stderr, "csv2jsonl: line %llu: %s\n", record_line, what);
    exit(code);
}

static inline void out_byte(unsigned char c) {
    if (outlen == IO_SIZE)
        out_flush();
    outbuf[outlen++] = c;
}

static void out_str(const char *s) {
    while (*s)
        out_byte((unsigned char)*s++);
}

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), or 0 if there is none. */
static size_t utf8_len(const unsigned char *s, size_t avail) {
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t len;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;      /* overlong */
        else if (c == 0xED) hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;      /* overlong */
        else if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (avail < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

static void out_json_string(const unsigned char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    out_byte('"');
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c >= 0x80) {
            size_t len = utf8_len(s + i, n - i);
            if (len == 0) {
                out_str("\\ufffd");
                i++;
            } else {
                while (len--)
                    out_byte(s[i++]);
            }
            continue;
        }
        i++;
        switch (c) {
        case '"': out_str("\\\""); break;
        case '\\': out_str("\\\\"); break;
        case '\b': out_str("\\b"); break;
        case '\f': out_str("\\f"); break;
        case '\n': out_str("\\n"); break;
        case '\r': out_str("\\r"); break;
        case '\t': out_str("\\t"); break;
        default:
            if (c < 0x20) {
                out_str("\\u00");
                out_byte(hex[c >> 4]);
                out_byte(hex[c & 15]);
            } else {
                out_byte(c);
            }
        }
    }
    out_byte('"');
}

static void field_span(const struct record *r, size_t i, const unsigned char **p, size_t *n) {
    size_t start = i == 0 ? 0 : r->end[i - 1];
    *p = r->data + start;
    *n = r->end[i] - start;
}

static void emit_row(void) {
    const unsigned char *p;
    size_t n;
    out_byte('{');
    for (size_t i = 0; i < row.nfields; i++) {
        if (i > 0)
            out_byte(',');
        field_span(&header, i, &p, &n);
        out_json_string(p, n);
        out_byte(':');
        field_span(&row, i, &p, &n);
        out_json_string(p, n);
    }
    out_str("}\n");
}

static inline void start_record(void) {
    if (!record_started) {
        record_started = 1;
        record_line = line;
    }
}

static inline void push_byte(unsigned char c) {
    if (cur->len == RECORD_MAX_BYTES)
        fail(EXIT_TOO_LONG, "record longer than 1 MiB");
    cur->data[cur->len++] = c;
}

static void end_field(void) {
    if (cur->nfields == RECORD_MAX_FIELDS)
        fail(EXIT_TOO_LONG, "record has more than 65536 fields");
    cur->end[cur->nfields++] = (uint32_t)cur->len;
}

static void end_record(void) {
    if (!record_started)
        return; /* blank line */
    end_field();
    if (!have_header) {
        have_header = 1;
        cur = &row;
    } else {
        if (row.nfields != header.nfields) {
            char msg[96];
            snprintf(msg, sizeof msg, "record has %zu fields, header has %zu",
                     row.nfields, header.nfields);
            fail(EXIT_MALFORMED, msg);
        }
        emit_row();
    }
    cur->len = 0;
    cur->nfields = 0;
    record_started = 0;
}

enum state {
    FIELD_START,     /* nothing of the current field read yet */
    UNQUOTED,        /* inside a field that did not start with a quote */
    QUOTED,          /* inside a quoted field */
    QUOTE_IN_QUOTED, /* just read a '"' inside a quoted field: "" or the closing one */
};

int main(void) {
    enum state st = FIELD_START;
    int first_block = 1;
    size_t n;

    /* fread only returns short at end of input, so the first block holds the whole
     * BOM if there is one. */
    while ((n = fread(inbuf, 1, sizeof inbuf, stdin)) > 0) {
        size_t i = 0;
        if (first_block) {
            first_block = 0;
            if (n >= 3 && inbuf[0] == 0xEF && inbuf[1] == 0xBB && inbuf[2] == 0xBF)
                i = 3;
        }
        for (; i < n; i++) {
            unsigned char c = inbuf[i];
            switch (st) {
            case FIELD_START:
                if (c == '"') {
                    start_record();
                    quote_line = line;
                    st = QUOTED;
                } else if (c == ',') {
                    start_record();
                    end_field();
                } else if (c == '\n' || c == '\r') {
                    end_record();
                } else {
                    start_record();
                    push_byte(c);
                    st = UNQUOTED;
                }
                break;
            case UNQUOTED:
                if (c == ',') {
                    end_field();
                    st = FIELD_START;
                } else if (c == '\n' || c == '\r') {
                    end_record();
                    st = FIELD_START;
                } else {
                    push_byte(c);
                }
                break;
            case QUOTED:
                if (c == '"')
                    st = QUOTE_IN_QUOTED;
                else
                    push_byte(c);
                break;
            case QUOTE_IN_QUOTED:
                if (c == '"') {
                    push_byte('"');
                    st = QUOTED;
                } else if (c == ',') {
                    end_field();
                    st = FIELD_START;
                } else if (c == '\n' || c == '\r') {
                    end_record();
                    st = FIELD_START;
                } else {
                    record_line = line;
                    fail(EXIT_MALFORMED, "unexpected character after a closing quote");
                }
                break;
            }
            if (c == '\n')
                line++;
        }
    }
    if (ferror(stdin)) {
        perror("csv2jsonl: read");
        return EXIT_IO;
    }
    if (st == QUOTED) {
        record_line = quote_line;
        fail(EXIT_MALFORMED, "quoted field opened here is never closed");
    }
    end_record(); /* a last record without a line break */

    out_flush();
    if (fflush(stdout) != 0) {
        perror("csv2jsonl: write");
        return EXIT_IO;
    }
    return 0;
}
