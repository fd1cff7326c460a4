/* kb_json: the C interface of kb_json.h over simdjson's on-demand API.
 * In: JSONL bytes read in large chunks from a file or standard input, and
 * small JSON texts (--vector arrays, metadata objects) from the CLI.
 * Out: borrowed views of each record (id, text, floats, minified metadata).
 * State: all of it hangs off a kb_jsonl_t (one simdjson parser each). */
#include "kb_json.h"

#include "kb_err.h"

#include <simdjson.h>

#include <cassert>
#include <cerrno>
#include <cfloat>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include <fcntl.h>
#include <locale.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- LINES AND CHUNKS
 * --------------------------------------------------------
 *
 * The reader owns one buffer: buf[0..cap) of data plus SIMDJSON_PADDING more
 * bytes that are never data. buf[pos..end) has been read but not consumed;
 * buf[pos..scan) is known to hold no '\n'.
 *
 * kb_jsonl_next() looks for '\n' in buf[scan..end) (memchr):
 *  - found at nl: line r->line + 1 is buf[pos..nl) minus one trailing '\r';
 *    pos = scan = nl + 1. The line is parsed in place: simdjson may read up
 *    to SIMDJSON_PADDING bytes past its end, and those bytes are the next
 *    lines or the padding after cap, so no copy is needed.
 *  - not found, end of input: buf[pos..end) is the last line (no '\n').
 *  - not found, more to read: move buf[pos..end) to the front; if it fills
 *    the whole buffer, double cap (up to KB__JSONL_MAX_LINE + 1); read() once
 *    into buf[end..cap) and look again from scan.
 * A line of more than KB__JSONL_MAX_LINE bytes fails with KB_ETOOBIG as soon
 * as the buffer is full without a '\n'; the buffered part is dropped and the
 * next call first discards input up to and including the line's '\n'
 * (r->skip), so it goes on with the next line as for any other error.
 * A read() error is final: it is returned once, then the reader is at end.
 *
 * r->line counts every line handed out: records, blank lines, failed lines.
 * Chunk size: KB__JSONL_CHUNK, or what the caller of kb_jsonl_open_chunk()
 * asks for (tests put chunk boundaries inside records with it).
 * 1 MiB measured fastest (bench_jsonl, 8.9 KB records): the read() copy is
 * still in cache when parsed; 16 MiB was ~4% slower, 64 MiB ~15%. mmap was
 * not used: touching the pages cost about what read() copying them does
 * here, stdin needs read() anyway, and a file truncated under a mapping
 * raises SIGBUS. */

/* ---- RECORDS
 * -----------------------------------------------------------------
 *
 * A non-blank line is one JSON object with keys id (required; string or
 * integer), text (string), embedding (array of numbers), metadata (object or
 * null); any other or repeated key fails. Keys are compared unescaped.
 * "text": null and "embedding": null are errors, "metadata": null is absent.
 * id and text point into the parser's string buffer (unescaped), embedding
 * and metadata into the reader's own buffers; all stay valid until the next
 * iterate(), i.e. the next kb_jsonl_next().
 * Numbers are parsed as double (correctly rounded: fast_double, else
 * strtod) and rounded to float the IEEE way: beyond FLT_MAX they become
 * +-inf, as do well-formed numbers beyond DBL_MAX such as 1e400, which
 * simdjson refuses (finiteness is checked by the caller, not here).
 * Metadata is walked completely (so it is validated) and written out again
 * minified: strings and keys are unescaped by simdjson and escaped again by
 * us (so the output is valid JSON even if the input used other escapes),
 * numbers are copied as written after a grammar check. */

namespace
{

namespace od = simdjson::ondemand;
using simdjson::error_code;

constexpr size_t KB__JSONL_CHUNK = 1u << 20;
constexpr size_t KB__JSONL_MAX_LINE = 64u << 20; /* bytes, without '\n' */
constexpr size_t KB__PAD = simdjson::SIMDJSON_PADDING;
constexpr int KB__JSON_MAX_DEPTH = 128; /* nesting inside metadata */
constexpr size_t KB__ERR_EXTRA = 512;   /* message bytes beyond the name */

/* A growable byte buffer (malloc'd, so nothing here throws). */
struct kb__buf {
    char *p = nullptr;
    size_t len = 0; /* bytes used */
    size_t cap = 0; /* bytes allocated */
};

bool buf_reserve(kb__buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return true;
    size_t want = b->len + extra;
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < want)
        ncap *= 2;
    char *np = static_cast<char *>(realloc(b->p, ncap));
    if (!np)
        return false;
    b->p = np;
    b->cap = ncap;
    return true;
}

bool buf_put(kb__buf *b, const char *s, size_t n)
{
    if (!buf_reserve(b, n))
        return false;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return true;
}

} // namespace

/* The reader (opaque in the header). */
struct kb_jsonl {
    od::parser parser; /* owns the unescaped id/text bytes of a record */
    int fd = -1;
    bool own_fd = false;  /* false for standard input */
    bool eof = false;     /* read() returned 0 or failed: no more input */
    bool skip = false;    /* discard input up to the next '\n' first */
    char *name = nullptr; /* path, or "<stdin>"; used in messages */
    char *buf = nullptr;  /* cap + KB__PAD bytes */
    size_t cap = 0;       /* data capacity of buf */
    size_t pos = 0;       /* first byte not yet consumed */
    size_t scan = 0;      /* buf[pos..scan) has no '\n' */
    size_t end = 0;       /* one past the last byte read */
    uint64_t line = 0;    /* number of the last line handed out */
    float *emb = nullptr; /* embedding of the current record */
    size_t emb_cap = 0;   /* floats allocated in emb */
    kb__buf meta;         /* minified metadata of the current record */
    char idnum[24] = {0}; /* decimal text of an integer id */
    char *err = nullptr;  /* last error; strlen(name) + KB__ERR_EXTRA bytes */
    size_t errlen = 0;
};

namespace
{

const char *sj_name(error_code e)
{
    switch (e) {
    case simdjson::SUCCESS: return "SUCCESS";
    case simdjson::CAPACITY: return "CAPACITY";
    case simdjson::MEMALLOC: return "MEMALLOC";
    case simdjson::TAPE_ERROR: return "TAPE_ERROR";
    case simdjson::DEPTH_ERROR: return "DEPTH_ERROR";
    case simdjson::STRING_ERROR: return "STRING_ERROR";
    case simdjson::T_ATOM_ERROR: return "T_ATOM_ERROR";
    case simdjson::F_ATOM_ERROR: return "F_ATOM_ERROR";
    case simdjson::N_ATOM_ERROR: return "N_ATOM_ERROR";
    case simdjson::NUMBER_ERROR: return "NUMBER_ERROR";
    case simdjson::UTF8_ERROR: return "UTF8_ERROR";
    case simdjson::UNINITIALIZED: return "UNINITIALIZED";
    case simdjson::EMPTY: return "EMPTY";
    case simdjson::UNESCAPED_CHARS: return "UNESCAPED_CHARS";
    case simdjson::UNCLOSED_STRING: return "UNCLOSED_STRING";
    case simdjson::INCORRECT_TYPE: return "INCORRECT_TYPE";
    case simdjson::NUMBER_OUT_OF_RANGE: return "NUMBER_OUT_OF_RANGE";
    case simdjson::INCOMPLETE_ARRAY_OR_OBJECT:
        return "INCOMPLETE_ARRAY_OR_OBJECT";
    case simdjson::TRAILING_CONTENT: return "TRAILING_CONTENT";
    default: return "SIMDJSON_ERROR";
    }
}

/* "NAME: message" of a simdjson error, for "malformed JSON (...)". */
#define KB__SJ_FMT "%s: %s"
#define KB__SJ_ARGS(e) sj_name(e), simdjson::error_message(e)

__attribute__((format(printf, 4, 5))) int
put_err(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Sets the reader's error to "NAME:LINE: message" and returns code. */
__attribute__((format(printf, 4, 5))) int
rd_fail(kb_jsonl *r, uint64_t line, int code, const char *fmt, ...)
{
    int n = snprintf(r->err, r->errlen, "%s:%llu: ", r->name,
                     static_cast<unsigned long long>(line));
    if (n > 0 && static_cast<size_t>(n) < r->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->err + n, r->errlen - static_cast<size_t>(n), fmt, ap);
        va_end(ap);
    }
    return code;
}

inline bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

inline bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Without the whitespace that raw_json_token() keeps after a scalar. */
std::string_view trim_token(std::string_view t)
{
    while (!t.empty() && is_ws(t.back()))
        t.remove_suffix(1);
    return t;
}

/* True if t is exactly one number by the JSON grammar (RFC 8259, 6). */
bool number_ok(std::string_view t)
{
    size_t i = 0, n = t.size();
    if (i < n && t[i] == '-')
        i++;
    if (i >= n)
        return false;
    if (t[i] == '0') {
        i++;
    } else if (t[i] >= '1' && t[i] <= '9') {
        while (i < n && is_digit(t[i]))
            i++;
    } else {
        return false;
    }
    if (i < n && t[i] == '.') {
        i++;
        if (i >= n || !is_digit(t[i]))
            return false;
        while (i < n && is_digit(t[i]))
            i++;
    }
    if (i < n && (t[i] == 'e' || t[i] == 'E')) {
        i++;
        if (i < n && (t[i] == '+' || t[i] == '-'))
            i++;
        if (i >= n || !is_digit(t[i]))
            return false;
        while (i < n && is_digit(t[i]))
            i++;
    }
    return i == n;
}

/* True if t is a well-formed JSON number without fraction or exponent. */
bool is_integer_token(std::string_view t)
{
    return number_ok(t) && t.find_first_of(".eE") == std::string_view::npos;
}

/* double -> float without relying on out-of-range conversion (undefined in
 * C and C++): beyond FLT_MAX, round to nearest gives FLT_MAX below the
 * midpoint 0x1.ffffffp127 between FLT_MAX and 2^128, and inf from it on. */
inline float d2f(double d)
{
    if (d <= FLT_MAX && d >= -FLT_MAX)
        return static_cast<float>(d);
    if (std::isnan(d))
        return NAN;
    float big = std::fabs(d) >= 0x1.ffffffp127 ? INFINITY : FLT_MAX;
    return d < 0 ? -big : big;
}

/* True if p[0..8) are all ASCII digits (SWAR; p needs 8 readable bytes). */
inline bool eight_digits(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return ((v & 0xF0F0F0F0F0F0F0F0u) |
            (((v + 0x0606060606060606u) & 0xF0F0F0F0F0F0F0F0u) >> 4)) ==
           0x3333333333333333u;
}

/* The value of eight ASCII digits p[0..8) (SWAR). */
inline uint32_t eight_digits_value(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    v = (v & 0x0F0F0F0F0F0F0F0Fu) * 2561 >> 8;
    v = (v & 0x00FF00FF00FF00FFu) * 6553601 >> 16;
    return static_cast<uint32_t>((v & 0x0000FFFF0000FFFFu) * 42949672960001u >>
                                 32);
}

/* Fast path for a number token at p, as json.dumps writes embeddings
 * ("-0.012345678901234567"): 70% of the ingest time is spent here.
 * simdjson's on-demand get_double() reads digits one by one; we read the
 * fraction 8 digits at a time and then call the conversion it ends in,
 * compute_float_64() (Clinger's fast path, then Eisel-Lemire), so the double
 * is the same, correctly rounded. Returns false for anything unusual (more
 * than 19 significant digits, long or out-of-range exponents, bad grammar,
 * or when compute_float_64 cannot decide); the caller then classifies the
 * token and uses slow_double(). compute_float_64 and the power bounds are
 * internals of simdjson 3.0.x (Debian 12), not its public API: CMakeLists.txt
 * compiles and runs a check of them at configure time (KB_SIMDJSON_FAST_FLOATS_*)
 * and, when another simdjson lacks them or they behave otherwise, builds with
 * KB_JSON_NO_FAST_FLOATS and says so: then this function returns false and
 * every number goes through strtod (values identical, ingest slower).
 * p has SIMDJSON_PADDING readable bytes after the token. */
inline bool fast_double(const char *p, double *d)
{
    bool neg = *p == '-';
    p += neg;
    const char *start = p;
    uint64_t i = 0;
    if (*p == '0') {
        p++;
    } else {
        while (is_digit(*p))
            i = 10 * i + static_cast<uint64_t>(*p++ - '0');
        if (p == start)
            return false;
    }
    int64_t exp = 0;
    const char *digits_end;
    if (*p == '.') {
        const char *f = ++p;
        if (eight_digits(p)) {
            i = i * 100000000 + eight_digits_value(p);
            p += 8;
            if (eight_digits(p)) {
                i = i * 100000000 + eight_digits_value(p);
                p += 8;
            }
        }
        while (is_digit(*p))
            i = 10 * i + static_cast<uint64_t>(*p++ - '0');
        if (p == f)
            return false;
        exp = f - p;
        digits_end = p;
        if (digits_end - start - 1 > 19) {
            const char *s = start;
            while (*s == '0' || *s == '.')
                s++;
            if (digits_end - s - (s < f ? 1 : 0) > 19)
                return false;
        }
    } else {
        digits_end = p;
        if (digits_end - start > 19)
            return false;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        bool eneg = *p == '-';
        p += eneg || *p == '+';
        const char *es = p;
        int64_t e = 0;
        while (is_digit(*p) && p - es < 6)
            e = 10 * e + (*p++ - '0');
        if (p == es || is_digit(*p))
            return false;
        exp += eneg ? -e : e;
    }
    char c = *p;
    if (!(c == ',' || c == ']' || c == '}' || is_ws(c)))
        return false;
#ifdef KB_JSON_NO_FAST_FLOATS
    (void)exp;
    (void)i;
    (void)neg;
    (void)d;
    return false;
#else
    if (exp < simdjson::internal::smallest_power ||
        exp > simdjson::internal::largest_power)
        return false;
    return simdjson::SIMDJSON_BUILTIN_IMPLEMENTATION::numberparsing::
        compute_float_64(exp, i, neg, *d);
#endif
}

/* Slow path: any well-formed number t (followed in memory by a byte that
 * ends it) with glibc's correctly rounded strtod in the "C" locale; beyond
 * the double range it gives +-HUGE_VAL = +-inf, below it 0 or subnormals.
 * We do not fall back on simdjson's get_double(): in 3.0.1 it returns wrong
 * values for "0." followed by more than 19 digits (its overflow check
 * counts the leading zeros instead of the digits): 0.4714469732016277614405
 * gives 1.69e-06. test_kb_json_parse_floats_match_strtod covers this. */
bool slow_double(std::string_view t, double *d)
{
    locale_t c = newlocale(LC_ALL_MASK, "C", static_cast<locale_t>(0));
    if (!c)
        return false;
    char *end;
    *d = strtod_l(t.data(), &end, c);
    freelocale(c);
    return end == t.data() + t.size();
}

/* One array element as a double. Returns SUCCESS, INCORRECT_TYPE (not a
 * number at all), NUMBER_ERROR (looks like a number but is malformed) or
 * TAPE_ERROR (no value: "[1,,2]"). Well-formed numbers beyond the double
 * range give +-inf. */
inline error_code elem_double(od::value &v, double *d)
{
    if (simdjson_likely(fast_double(v.raw_json_token().data(), d)))
        return simdjson::SUCCESS;
    std::string_view t = trim_token(v.raw_json_token());
    if (t.empty() || t[0] == ',' || t[0] == ':' || t[0] == ']' || t[0] == '}')
        return simdjson::TAPE_ERROR;
    if (!(t[0] == '-' || is_digit(t[0])))
        return simdjson::INCORRECT_TYPE;
    if (!number_ok(t) || !slow_double(t, d))
        return simdjson::NUMBER_ERROR;
    return simdjson::SUCCESS;
}

/* Offset just past the first complete object or array in s, or 0 if there is
 * none (unbalanced). Used only to explain an error: when simdjson says the
 * document ends early, the real cause may be trailing content after it. */
size_t value_end(const char *s, size_t len)
{
    size_t i = 0, depth = 0;
    bool in_str = false;
    while (i < len && is_ws(s[i]))
        i++;
    if (i >= len || (s[i] != '{' && s[i] != '['))
        return 0;
    for (; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth == 0)
                return i + 1;
        }
    }
    return 0;
}

/* True if s holds one complete object/array followed by non-blank bytes. */
bool has_trailing(const char *s, size_t len)
{
    size_t i = value_end(s, len);
    if (i == 0)
        return false;
    while (i < len && is_ws(s[i]))
        i++;
    return i < len;
}

/* Appends s as a JSON string literal (quotes, minimal escapes). */
bool put_string(kb__buf *b, std::string_view s)
{
    static const char hex[] = "0123456789abcdef";
    if (!buf_reserve(b, s.size() * 6 + 2))
        return false;
    char *o = b->p + b->len;
    *o++ = '"';
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = static_cast<char>(c);
        } else if (c >= 0x20) {
            *o++ = static_cast<char>(c);
        } else if (c == '\n') {
            *o++ = '\\', *o++ = 'n';
        } else if (c == '\t') {
            *o++ = '\\', *o++ = 't';
        } else if (c == '\r') {
            *o++ = '\\', *o++ = 'r';
        } else {
            *o++ = '\\', *o++ = 'u', *o++ = '0', *o++ = '0';
            *o++ = hex[c >> 4], *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    b->len = static_cast<size_t>(o - b->p);
    return true;
}

error_code walk_value(od::value &v, kb__buf *out, int depth);

/* Walks a whole object, checking it; appends it minified to out if out. */
error_code walk_object(od::object &o, kb__buf *out, int depth)
{
    if (depth > KB__JSON_MAX_DEPTH)
        return simdjson::DEPTH_ERROR;
    if (out && !buf_put(out, "{", 1))
        return simdjson::MEMALLOC;
    bool first = true;
    for (auto fr : o) {
        od::field f;
        error_code e = std::move(fr).get(f);
        if (e)
            return e;
        std::string_view k;
        if ((e = f.unescaped_key().get(k)))
            return e;
        if (out && ((!first && !buf_put(out, ",", 1)) || !put_string(out, k) ||
                    !buf_put(out, ":", 1)))
            return simdjson::MEMALLOC;
        first = false;
        if ((e = walk_value(f.value(), out, depth + 1)))
            return e;
    }
    if (out && !buf_put(out, "}", 1))
        return simdjson::MEMALLOC;
    return simdjson::SUCCESS;
}

error_code walk_array(od::array &a, kb__buf *out, int depth)
{
    if (depth > KB__JSON_MAX_DEPTH)
        return simdjson::DEPTH_ERROR;
    if (out && !buf_put(out, "[", 1))
        return simdjson::MEMALLOC;
    bool first = true;
    for (auto er : a) {
        od::value v;
        error_code e = std::move(er).get(v);
        if (e)
            return e;
        if (out && !first && !buf_put(out, ",", 1))
            return simdjson::MEMALLOC;
        first = false;
        if ((e = walk_value(v, out, depth + 1)))
            return e;
    }
    if (out && !buf_put(out, "]", 1))
        return simdjson::MEMALLOC;
    return simdjson::SUCCESS;
}

/* Scalars are checked by their getters (numbers by number_ok, since
 * simdjson refuses big but valid ones); a scalar left unconsumed is skipped
 * by the enclosing object or array iterator. */
error_code walk_value(od::value &v, kb__buf *out, int depth)
{
    od::json_type t;
    error_code e = v.type().get(t);
    if (e)
        return e;
    switch (t) {
    case od::json_type::object: {
        od::object o;
        if ((e = v.get_object().get(o)))
            return e;
        return walk_object(o, out, depth);
    }
    case od::json_type::array: {
        od::array a;
        if ((e = v.get_array().get(a)))
            return e;
        return walk_array(a, out, depth);
    }
    case od::json_type::string: {
        std::string_view s;
        if ((e = v.get_string().get(s)))
            return e == simdjson::INCORRECT_TYPE ? simdjson::STRING_ERROR : e;
        if (out && !put_string(out, s))
            return simdjson::MEMALLOC;
        return simdjson::SUCCESS;
    }
    case od::json_type::number: {
        std::string_view s = trim_token(v.raw_json_token());
        if (!number_ok(s))
            return simdjson::NUMBER_ERROR;
        if (out && !buf_put(out, s.data(), s.size()))
            return simdjson::MEMALLOC;
        return simdjson::SUCCESS;
    }
    case od::json_type::boolean: {
        bool b;
        if ((e = v.get_bool().get(b))) {
            if (e != simdjson::INCORRECT_TYPE)
                return e;
            return v.raw_json_token()[0] == 't' ? simdjson::T_ATOM_ERROR
                                                : simdjson::F_ATOM_ERROR;
        }
        if (out && !(b ? buf_put(out, "true", 4) : buf_put(out, "false", 5)))
            return simdjson::MEMALLOC;
        return simdjson::SUCCESS;
    }
    case od::json_type::null: {
        bool isnull;
        if ((e = v.is_null().get(isnull)) || !isnull)
            return simdjson::N_ATOM_ERROR;
        if (out && !buf_put(out, "null", 4))
            return simdjson::MEMALLOC;
        return simdjson::SUCCESS;
    }
    }
    return simdjson::TAPE_ERROR;
}

/* A key for a message: at most 64 bytes, control bytes shown as '?'. */
void show_key(std::string_view k, char *dst, size_t dstlen)
{
    size_t n = k.size() < 64 ? k.size() : 64;
    if (n >= dstlen)
        n = dstlen - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = static_cast<unsigned char>(k[i]);
        dst[i] = (c < 0x20 || c == 0x7f) ? '?' : static_cast<char>(c);
    }
    dst[n] = '\0';
    if (k.size() > n && n >= 3)
        memcpy(dst + n - 3, "...", 3);
}

/* Copies s[0..len) into a new buffer with zeroed padding (the helpers get
 * caller memory with no padding). NULL if out of memory. */
char *padded_copy(const char *s, size_t len)
{
    char *p = static_cast<char *>(malloc(len + KB__PAD));
    if (!p)
        return nullptr;
    if (len)
        memcpy(p, s, len);
    memset(p + len, 0, KB__PAD);
    return p;
}

enum { K_ID, K_TEXT, K_EMB, K_META, K_UNKNOWN };

inline int key_index(std::string_view k)
{
    switch (k.size()) {
    case 2: return k == "id" ? K_ID : K_UNKNOWN;
    case 4: return k == "text" ? K_TEXT : K_UNKNOWN;
    case 8: return k == "metadata" ? K_META : K_UNKNOWN;
    case 9: return k == "embedding" ? K_EMB : K_UNKNOWN;
    default: return K_UNKNOWN;
    }
}

const char *const key_names[] = {"id", "text", "embedding", "metadata"};

/* Parses line r->line, p[0..len), into rec. p has at least avail bytes
 * allocated (avail >= len + KB__PAD). Returns 1 or an error code. */
int parse_record(kb_jsonl *r, const char *p, size_t len, size_t avail,
                 kb_jsonl_rec_t *rec)
{
    const uint64_t ln = r->line;
    if (r->parser.capacity() < len) {
        size_t want = r->parser.capacity() * 2;
        if (want < len)
            want = len;
        if (want < (64u << 10))
            want = 64u << 10;
        if (r->parser.allocate(want) != simdjson::SUCCESS)
            return rd_fail(r, ln, -ENOMEM, "out of memory for a %zu-byte line",
                           len);
    }
    od::document doc;
    error_code e = r->parser.iterate(p, len, avail).get(doc);
    od::object obj;
    if (!e)
        e = doc.get_object().get(obj);
    if (e == simdjson::INCORRECT_TYPE)
        return rd_fail(r, ln, KB_EBADJSON, "line is not a JSON object");
    if (e == simdjson::INCOMPLETE_ARRAY_OR_OBJECT && has_trailing(p, len))
        return rd_fail(r, ln, KB_EBADJSON, "trailing content after the object");
    if (e == simdjson::MEMALLOC)
        return rd_fail(r, ln, -ENOMEM, "out of memory");
    if (e)
        return rd_fail(r, ln, KB_EBADJSON, "malformed JSON (" KB__SJ_FMT ")",
                       KB__SJ_ARGS(e));

    rec->id = nullptr;
    rec->id_len = 0;
    rec->text = "";
    rec->text_len = 0;
    rec->embedding = nullptr;
    rec->embedding_len = 0;
    rec->metadata = nullptr;
    rec->metadata_len = 0;
    rec->line = ln;

    unsigned seen = 0;
    for (auto fr : obj) {
        od::field f;
        std::string_view k;
        if ((e = std::move(fr).get(f)) || (e = f.unescaped_key().get(k)))
            return rd_fail(r, ln, KB_EBADJSON,
                           "malformed JSON (" KB__SJ_FMT ")", KB__SJ_ARGS(e));
        int ki = key_index(k);
        if (ki == K_UNKNOWN) {
            char shown[80];
            show_key(k, shown, sizeof shown);
            return rd_fail(r, ln, KB_EBADJSON,
                           "unknown key \"%s\" (expected id, text, embedding, "
                           "metadata)",
                           shown);
        }
        if (seen & (1u << ki))
            return rd_fail(r, ln, KB_EBADJSON, "duplicate key \"%s\"",
                           key_names[ki]);
        seen |= 1u << ki;
        od::value &v = f.value();

        if (ki == K_ID) {
            od::json_type t;
            if ((e = v.type().get(t)))
                return rd_fail(r, ln, KB_EBADJSON,
                               "malformed JSON in \"id\" (" KB__SJ_FMT ")",
                               KB__SJ_ARGS(e));
            if (t == od::json_type::string) {
                std::string_view s;
                if ((e = v.get_string().get(s)))
                    return rd_fail(r, ln, KB_EBADJSON,
                                   "malformed JSON in \"id\" (" KB__SJ_FMT ")",
                                   KB__SJ_ARGS(e));
                rec->id = s.data();
                rec->id_len = s.size();
            } else if (t == od::json_type::number) {
                int64_t i;
                uint64_t u;
                int n;
                if (!v.get_int64().get(i))
                    n = snprintf(r->idnum, sizeof r->idnum, "%lld",
                                 static_cast<long long>(i));
                else if (!v.get_uint64().get(u))
                    n = snprintf(r->idnum, sizeof r->idnum, "%llu",
                                 static_cast<unsigned long long>(u));
                else if (is_integer_token(trim_token(v.raw_json_token())))
                    return rd_fail(r, ln, KB_EBADJSON,
                                   "\"id\" must be a string or integer "
                                   "(a 64-bit one)");
                else
                    return rd_fail(r, ln, KB_EBADJSON,
                                   "\"id\" must be a string or integer");
                rec->id = r->idnum;
                rec->id_len = static_cast<size_t>(n);
            } else {
                return rd_fail(r, ln, KB_EBADJSON,
                               "\"id\" must be a string or integer");
            }
        } else if (ki == K_TEXT) {
            std::string_view s;
            e = v.get_string().get(s);
            if (e == simdjson::INCORRECT_TYPE)
                return rd_fail(r, ln, KB_EBADJSON, "\"text\" must be a string");
            if (e)
                return rd_fail(r, ln, KB_EBADJSON,
                               "malformed JSON in \"text\" (" KB__SJ_FMT ")",
                               KB__SJ_ARGS(e));
            rec->text = s.data();
            rec->text_len = s.size();
        } else if (ki == K_EMB) {
            od::array a;
            e = v.get_array().get(a);
            if (e == simdjson::INCORRECT_TYPE)
                return rd_fail(r, ln, KB_EBADJSON,
                               "\"embedding\" must be an array of numbers");
            if (e)
                return rd_fail(r, ln, KB_EBADJSON,
                               "malformed JSON in \"embedding\" (" KB__SJ_FMT
                               ")",
                               KB__SJ_ARGS(e));
            size_t n = 0;
            for (auto er : a) {
                od::value ev;
                double d;
                if ((e = std::move(er).get(ev)))
                    return rd_fail(
                        r, ln, KB_EBADJSON,
                        "malformed JSON in \"embedding\" (" KB__SJ_FMT ")",
                        KB__SJ_ARGS(e));
                if ((e = elem_double(ev, &d))) {
                    if (e == simdjson::INCORRECT_TYPE)
                        return rd_fail(r, ln, KB_EBADJSON,
                                       "\"embedding\"[%zu] is not a number", n);
                    if (e == simdjson::NUMBER_ERROR)
                        return rd_fail(r, ln, KB_EBADJSON,
                                       "\"embedding\"[%zu] is not a valid "
                                       "number",
                                       n);
                    return rd_fail(
                        r, ln, KB_EBADJSON,
                        "malformed JSON in \"embedding\" (" KB__SJ_FMT ")",
                        KB__SJ_ARGS(e));
                }
                if (simdjson_unlikely(n == r->emb_cap)) {
                    size_t ncap = r->emb_cap * 2;
                    float *ne = static_cast<float *>(
                        realloc(r->emb, ncap * sizeof(float)));
                    if (!ne)
                        return rd_fail(r, ln, -ENOMEM,
                                       "out of memory for %zu floats", ncap);
                    r->emb = ne;
                    r->emb_cap = ncap;
                }
                r->emb[n++] = d2f(d);
            }
            rec->embedding = r->emb;
            rec->embedding_len = n;
        } else { /* K_META */
            od::json_type t;
            if ((e = v.type().get(t)))
                return rd_fail(r, ln, KB_EBADJSON,
                               "malformed JSON in \"metadata\" (" KB__SJ_FMT
                               ")",
                               KB__SJ_ARGS(e));
            if (t == od::json_type::null) {
                bool isnull = false;
                if (v.is_null().get(isnull) || !isnull)
                    return rd_fail(
                        r, ln, KB_EBADJSON,
                        "malformed JSON in \"metadata\" (N_ATOM_ERROR)");
                continue;
            }
            if (t != od::json_type::object)
                return rd_fail(r, ln, KB_EBADJSON,
                               "\"metadata\" must be an object or null");
            od::object o;
            r->meta.len = 0;
            if (!(e = v.get_object().get(o)))
                e = walk_object(o, &r->meta, 1);
            if (e == simdjson::MEMALLOC)
                return rd_fail(r, ln, -ENOMEM, "out of memory for metadata");
            if (e)
                return rd_fail(r, ln, KB_EBADJSON,
                               "malformed JSON in \"metadata\" (" KB__SJ_FMT
                               ")",
                               KB__SJ_ARGS(e));
            rec->metadata = r->meta.p;
            rec->metadata_len = r->meta.len;
        }
    }
    const char *loc;
    if (doc.current_location().get(loc) == simdjson::SUCCESS)
        return rd_fail(r, ln, KB_EBADJSON,
                       "trailing content after the object (at byte %zu)",
                       static_cast<size_t>(loc - p) + 1);
    if (!(seen & (1u << K_ID)))
        return rd_fail(r, ln, KB_EBADJSON, "missing \"id\"");
    return 1;
}

/* read() once into buf[end..cap). Returns bytes read, 0 at end, -errno. */
ssize_t fill(kb_jsonl *r)
{
    for (;;) {
        ssize_t n = read(r->fd, r->buf + r->end, r->cap - r->end);
        if (n >= 0) {
            r->end += static_cast<size_t>(n);
            /* Defined bytes after the data: simdjson may peek at them. */
            memset(r->buf + r->end, 0, KB__PAD);
            return n;
        }
        if (errno != EINTR)
            return -errno;
    }
}

/* Makes room after the data: compacts, and grows a buffer that one partial
 * line fills. Returns 0, KB_ETOOBIG (line too long) or -ENOMEM. */
int make_room(kb_jsonl *r)
{
    if (r->pos > 0) {
        memmove(r->buf, r->buf + r->pos, r->end - r->pos);
        r->end -= r->pos;
        r->scan -= r->pos;
        r->pos = 0;
    }
    if (r->end < r->cap)
        return 0;
    if (r->cap > KB__JSONL_MAX_LINE)
        return KB_ETOOBIG;
    size_t ncap = r->cap * 2;
    if (ncap > KB__JSONL_MAX_LINE + 1)
        ncap = KB__JSONL_MAX_LINE + 1;
    char *nb = static_cast<char *>(realloc(r->buf, ncap + KB__PAD));
    if (!nb)
        return -ENOMEM;
    r->buf = nb;
    r->cap = ncap;
    return 0;
}

int next_line(kb_jsonl *r, kb_jsonl_rec_t *rec)
{
    for (;;) {
        if (simdjson_unlikely(r->skip)) {
            const char *nl = static_cast<const char *>(
                memchr(r->buf + r->pos, '\n', r->end - r->pos));
            if (nl) {
                r->pos = r->scan = static_cast<size_t>(nl - r->buf) + 1;
                r->skip = false;
                continue;
            }
            r->pos = r->scan = r->end = 0;
            if (r->eof) {
                r->skip = false;
                return 0;
            }
            ssize_t n = fill(r);
            if (n < 0) {
                r->eof = true;
                r->skip = false;
                return rd_fail(r, r->line, static_cast<int>(n),
                               "read error: %s",
                               strerror(static_cast<int>(-n)));
            }
            if (n == 0)
                r->eof = true;
            continue;
        }

        const char *nl = static_cast<const char *>(
            memchr(r->buf + r->scan, '\n', r->end - r->scan));
        size_t start = r->pos, len;
        if (nl) {
            len = static_cast<size_t>(nl - r->buf) - start;
            r->pos = r->scan = start + len + 1;
        } else if (r->eof) {
            if (r->pos == r->end)
                return 0;
            len = r->end - start;
            r->pos = r->scan = r->end;
        } else {
            r->scan = r->end;
            int rc = make_room(r);
            if (rc == KB_ETOOBIG) {
                r->line++;
                r->skip = true;
                r->pos = r->scan = r->end = 0;
                return rd_fail(r, r->line, KB_ETOOBIG,
                               "line longer than %zu bytes",
                               KB__JSONL_MAX_LINE);
            }
            if (rc < 0)
                return rd_fail(r, r->line + 1, rc,
                               "out of memory for a long line");
            ssize_t n = fill(r);
            if (n < 0) {
                r->eof = true;
                r->pos = r->scan = r->end = 0;
                return rd_fail(r, r->line + 1, static_cast<int>(n),
                               "read error: %s",
                               strerror(static_cast<int>(-n)));
            }
            if (n == 0)
                r->eof = true;
            continue;
        }

        r->line++;
        const char *p = r->buf + start;
        if (len && p[len - 1] == '\r')
            len--;
        if (len > KB__JSONL_MAX_LINE)
            return rd_fail(r, r->line, KB_ETOOBIG, "line longer than %zu bytes",
                           KB__JSONL_MAX_LINE);
        if (p[0] != '{') { /* fast path: records start with '{' */
            size_t i = 0;
            while (i < len && is_ws(p[i]))
                i++;
            if (i == len)
                continue; /* blank line */
        }
        return parse_record(r, p, len, r->cap + KB__PAD - start, rec);
    }
}

/* One parser of each kind per thread, kept between calls: a parser allocates
 * its buffers (sized for the longest document it has seen) when first used,
 * and the write path checks every document's metadata, so a parser per call
 * cost an allocation and fresh pages per document. No call below parses
 * again before it is done with the previous result (callbacks do not parse
 * JSON), which is what reusing a parser requires. */
od::parser &scratch_od()
{
    static thread_local od::parser p;
    return p;
}

/* kb_json_parse_floats() on a padded copy b[0..len). */
int floats_in(const char *b, size_t len, float *out, size_t cap, size_t *n,
              char *err, size_t errlen)
{
    od::parser &p = scratch_od();
    od::document doc;
    od::array a;
    error_code e = p.iterate(b, len, len + KB__PAD).get(doc);
    if (!e)
        e = doc.get_array().get(a);
    if (e == simdjson::EMPTY)
        return put_err(err, errlen, KB_EBADJSON,
                       "empty input, expected an array of numbers");
    if (e == simdjson::INCORRECT_TYPE)
        return put_err(err, errlen, KB_EBADJSON, "not a JSON array");
    if (e == simdjson::INCOMPLETE_ARRAY_OR_OBJECT && has_trailing(b, len))
        return put_err(err, errlen, KB_EBADJSON,
                       "trailing content after the array");
    if (e)
        return put_err(err, errlen,
                       e == simdjson::MEMALLOC ? -ENOMEM : KB_EBADJSON,
                       "malformed JSON (" KB__SJ_FMT ")", KB__SJ_ARGS(e));
    size_t k = 0;
    for (auto er : a) {
        od::value v;
        double d;
        if ((e = std::move(er).get(v)))
            return put_err(err, errlen, KB_EBADJSON,
                           "malformed JSON (" KB__SJ_FMT ")", KB__SJ_ARGS(e));
        if (e = elem_double(v, &d); e == simdjson::INCORRECT_TYPE)
            return put_err(err, errlen, KB_EBADJSON,
                           "element %zu is not a number", k);
        if (e == simdjson::NUMBER_ERROR)
            return put_err(err, errlen, KB_EBADJSON,
                           "element %zu is not a valid number", k);
        if (e)
            return put_err(err, errlen, KB_EBADJSON,
                           "malformed JSON (" KB__SJ_FMT ")", KB__SJ_ARGS(e));
        if (k < cap)
            out[k] = d2f(d);
        k++;
    }
    const char *loc;
    if (doc.current_location().get(loc) == simdjson::SUCCESS)
        return put_err(err, errlen, KB_EBADJSON,
                       "trailing content after the array (at byte %zu)",
                       static_cast<size_t>(loc - b) + 1);
    if (k > cap)
        return put_err(err, errlen, KB_ETOOBIG,
                       "%zu numbers, more than the %zu allowed", k, cap);
    *n = k;
    return 0;
}

/* kb_json_check_object() on a padded copy b[0..len). */
int object_in(const char *b, size_t len, char *err, size_t errlen)
{
    od::parser &p = scratch_od();
    od::document doc;
    od::object o;
    error_code e = p.iterate(b, len, len + KB__PAD).get(doc);
    if (!e)
        e = doc.get_object().get(o);
    if (e == simdjson::INCORRECT_TYPE)
        return put_err(err, errlen, KB_EBADJSON, "not a JSON object");
    if (!e)
        e = walk_object(o, nullptr, 1);
    if (e == simdjson::EMPTY)
        return put_err(err, errlen, KB_EBADJSON,
                       "empty input, expected a JSON object");
    if (e == simdjson::INCOMPLETE_ARRAY_OR_OBJECT && has_trailing(b, len))
        return put_err(err, errlen, KB_EBADJSON,
                       "trailing content after the object");
    if (e == simdjson::DEPTH_ERROR)
        return put_err(err, errlen, KB_EBADJSON,
                       "nested more than %d levels deep", KB__JSON_MAX_DEPTH);
    if (e)
        return put_err(err, errlen,
                       e == simdjson::MEMALLOC ? -ENOMEM : KB_EBADJSON,
                       "malformed JSON (" KB__SJ_FMT ")", KB__SJ_ARGS(e));
    const char *loc;
    if (doc.current_location().get(loc) == simdjson::SUCCESS)
        return put_err(err, errlen, KB_EBADJSON,
                       "trailing content after the object (at byte %zu)",
                       static_cast<size_t>(loc - b) + 1);
    return 0;
}

/* A scalar's text for filters and listings: a string unescaped (quoted
 * when `quoted`, as JSON), a number or boolean exactly as written (the
 * document's own token: "1e2" stays "1e2", and a number beyond the double
 * range, which simdjson's number getters refuse, is still one). Returns
 * SUCCESS with *txt set, INCORRECT_TYPE for null, an object or an array. */
error_code scalar_text(od::value &v, bool quoted, std::string_view *txt)
{
    od::json_type t;
    error_code e = v.type().get(t);
    if (e)
        return e;
    switch (t) {
    case od::json_type::string:
        if (quoted) {
            *txt = trim_token(v.raw_json_token());
            return simdjson::SUCCESS;
        }
        return v.get_string().get(*txt);
    case od::json_type::number:
    case od::json_type::boolean:
        *txt = trim_token(v.raw_json_token());
        return simdjson::SUCCESS;
    default:
        return simdjson::INCORRECT_TYPE;
    }
}

/* The on-demand parser of kb_json_fields() and kb_json_value(), apart from
 * scratch_od() so that a callback may parse too. */
od::parser &fields_od()
{
    static thread_local od::parser p;
    return p;
}

/* kb_json_fields() on a padded copy b[0..len). The object was checked when
 * it was written (kb_json_check_object), so any error here is
 * KB_EBADJSON. */
int fields_in(const char *b, size_t len, kb_json_field_cb cb, void *ctx)
{
    od::document doc;
    od::object o;
    if (fields_od().iterate(b, len, len + KB__PAD).get(doc) ||
        doc.get_object().get(o))
        return KB_EBADJSON;
    for (auto field : o) {
        std::string_view key, txt;
        od::value v;
        if (field.unescaped_key().get(key) || field.value().get(v))
            return KB_EBADJSON;
        od::json_type t;
        if (v.type().get(t))
            return KB_EBADJSON;
        if (t == od::json_type::array) {
            od::array arr;
            if (v.get_array().get(arr))
                return KB_EBADJSON;
            for (auto el : arr) {
                od::value ev;
                if (el.get(ev))
                    return KB_EBADJSON;
                error_code e = scalar_text(ev, false, &txt);
                if (e == simdjson::INCORRECT_TYPE)
                    continue; /* null, nested object or array */
                if (e)
                    return KB_EBADJSON;
                int rc =
                    cb(ctx, key.data(), key.size(), txt.data(), txt.size());
                if (rc)
                    return rc;
            }
            continue;
        }
        error_code e = scalar_text(v, false, &txt);
        if (e == simdjson::INCORRECT_TYPE)
            continue;
        if (e)
            return KB_EBADJSON;
        /* Views into the parser's string buffer, which only grows while
         * this document is read: key stays valid after txt is unescaped. */
        int rc = cb(ctx, key.data(), key.size(), txt.data(), txt.size());
        if (rc)
            return rc;
    }
    return 0;
}

/* kb_json_value() on a padded copy b[0..len): the raw text of the value,
 * minified (whitespace outside strings removed; numbers as written). */
int value_in(const char *b, size_t len, const char *key, size_t key_len,
             char **out, size_t *out_len)
{
    od::document doc;
    od::object o;
    if (fields_od().iterate(b, len, len + KB__PAD).get(doc) ||
        doc.get_object().get(o))
        return KB_EBADJSON;
    std::string_view want(key, key_len);
    for (auto field : o) {
        std::string_view k, raw;
        od::value v;
        if (field.unescaped_key().get(k) || field.value().get(v))
            return KB_EBADJSON;
        if (k != want)
            continue;
        od::json_type t;
        if (v.type().get(t))
            return KB_EBADJSON;
        error_code e;
        if (t == od::json_type::object) {
            od::object sub;
            e = v.get_object().get(sub);
            if (!e)
                e = sub.raw_json().get(raw);
        } else if (t == od::json_type::array) {
            od::array sub;
            e = v.get_array().get(sub);
            if (!e)
                e = sub.raw_json().get(raw);
        } else if (t == od::json_type::null) {
            raw = "null";
            e = simdjson::SUCCESS;
        } else {
            e = scalar_text(v, true, &raw);
        }
        if (e)
            return KB_EBADJSON;
        *out = static_cast<char *>(malloc(raw.size() + 1));
        if (!*out)
            return -ENOMEM;
        size_t n = 0;
        if (simdjson::minify(raw.data(), raw.size(), *out, n)) {
            free(*out);
            *out = nullptr;
            return KB_EBADJSON;
        }
        (*out)[n] = 0;
        *out_len = n;
        return 0;
    }
    return 0; /* absent */
}

} // namespace

/* ---- the C interface
 * --------------------------------------------------------- No C++ exception
 * crosses it: simdjson is used through its error codes and our buffers are
 * malloc'd, so the catch blocks are a last line of defence. */

extern "C" {

int kb_jsonl_open(const char *path, kb_jsonl_t **out)
{
    return kb_jsonl_open_chunk(path, 0, out);
}

int kb_jsonl_open_chunk(const char *path, size_t chunk, kb_jsonl_t **out)
{
    assert(path && out);
    *out = nullptr;
    if (chunk == 0)
        chunk = KB__JSONL_CHUNK;
    if (chunk < KB_JSONL_CHUNK_MIN || chunk > KB_JSONL_CHUNK_MAX)
        return KB_EINVAL;
    bool is_stdin = strcmp(path, "-") == 0;
    int fd = 0;
    if (!is_stdin) {
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        struct stat st;
        if (fstat(fd, &st) == 0) {
            if (S_ISDIR(st.st_mode)) { /* open() allows it, read() fails */
                close(fd);
                return -EISDIR;
            }
            if (S_ISREG(st.st_mode))
                (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        }
    }
    kb_jsonl *r = nullptr;
    try {
        r = new (std::nothrow) kb_jsonl();
    } catch (...) {
        r = nullptr;
    }
    if (!r) {
        if (!is_stdin)
            close(fd);
        return -ENOMEM;
    }
    r->fd = fd;
    r->own_fd = !is_stdin;
    r->name = strdup(is_stdin ? "<stdin>" : path);
    r->cap = chunk;
    r->buf = static_cast<char *>(malloc(r->cap + KB__PAD));
    r->emb_cap = 1024;
    r->emb = static_cast<float *>(malloc(r->emb_cap * sizeof(float)));
    if (r->name) {
        r->errlen = strlen(r->name) + KB__ERR_EXTRA;
        r->err = static_cast<char *>(malloc(r->errlen));
    }
    if (!r->name || !r->buf || !r->emb || !r->err) {
        kb_jsonl_close(&r);
        return -ENOMEM;
    }
    r->err[0] = '\0';
    memset(r->buf, 0, KB__PAD);
    *out = r;
    return 0;
}

int kb_jsonl_next(kb_jsonl_t *r, kb_jsonl_rec_t *rec)
{
    assert(r && rec);
    r->err[0] = '\0';
    try {
        return next_line(r, rec);
    } catch (const std::bad_alloc &) {
        return rd_fail(r, r->line, -ENOMEM, "out of memory");
    } catch (...) {
        return rd_fail(r, r->line, KB_EBADJSON, "internal error in the parser");
    }
}

const char *kb_jsonl_error(const kb_jsonl_t *r)
{
    return r && r->err ? r->err : "";
}

void kb_jsonl_close(kb_jsonl_t **rp)
{
    if (!rp || !*rp)
        return;
    kb_jsonl *r = *rp;
    if (r->own_fd && r->fd >= 0)
        close(r->fd);
    free(r->name);
    free(r->buf);
    free(r->emb);
    free(r->meta.p);
    free(r->err);
    delete r;
    *rp = nullptr;
}

int kb_json_parse_floats(const char *s, size_t len, float *out, size_t cap,
                         size_t *n, char *err, size_t errlen)
{
    assert((s || !len) && n && (out || !cap));
    *n = 0;
    if (err && errlen)
        err[0] = '\0';
    char *b = padded_copy(s, len);
    if (!b)
        return put_err(err, errlen, -ENOMEM, "out of memory");
    int rc;
    try {
        rc = floats_in(b, len, out, cap, n, err, errlen);
    } catch (const std::bad_alloc &) {
        rc = put_err(err, errlen, -ENOMEM, "out of memory");
    } catch (...) {
        rc = put_err(err, errlen, KB_EBADJSON, "internal error in the parser");
    }
    free(b);
    return rc;
}

int kb_json_check_object(const char *s, size_t len, char *err, size_t errlen)
{
    assert(s || !len);
    if (err && errlen)
        err[0] = '\0';
    char *b = padded_copy(s, len);
    if (!b)
        return put_err(err, errlen, -ENOMEM, "out of memory");
    int rc;
    try {
        rc = object_in(b, len, err, errlen);
    } catch (const std::bad_alloc &) {
        rc = put_err(err, errlen, -ENOMEM, "out of memory");
    } catch (...) {
        rc = put_err(err, errlen, KB_EBADJSON, "internal error in the parser");
    }
    free(b);
    return rc;
}

int kb_json_value(const char *s, size_t len, const char *key, size_t key_len,
                  char **out, size_t *out_len)
{
    assert((s || !len) && out && out_len);
    *out = nullptr;
    *out_len = 0;
    char *b = padded_copy(s, len);
    if (!b)
        return -ENOMEM;
    int rc;
    try {
        rc = value_in(b, len, key, key_len, out, out_len);
    } catch (const std::bad_alloc &) {
        rc = -ENOMEM;
    } catch (...) {
        rc = KB_EBADJSON;
    }
    free(b);
    return rc;
}

int kb_json_fields(const char *s, size_t len, kb_json_field_cb cb, void *ctx)
{
    assert(s || !len);
    char *b = padded_copy(s, len);
    if (!b)
        return -ENOMEM;
    int rc;
    try {
        rc = fields_in(b, len, cb, ctx);
    } catch (const std::bad_alloc &) {
        rc = -ENOMEM;
    } catch (...) {
        rc = KB_EBADJSON;
    }
    free(b);
    return rc;
}

} /* extern "C" */
