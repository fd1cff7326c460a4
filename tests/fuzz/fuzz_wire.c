/* fuzz_wire: libFuzzer target for the wire decoders a hostile peer reaches:
 * the client Request decoder with its string check (kb_wire_decode_request),
 * the replication message decoder and the same check on it, and the UTF-8
 * check. Built and run by tests/fuzz/run.sh (clang -fsanitize=fuzzer,
 * address,undefined); a crash, leak or sanitizer report is a failure. */
#include "kb_err.h"
#include "kb_wire.h"
#include "kbsync.pb-c.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    char err[512];
    Kbsync__Request *req = NULL;
    uint64_t rid = 0;
    if (kb_wire_decode_request(data, len, 1 << 20, &req, &rid, err,
                               sizeof err) == 0) {
        /* a decoded request's strings passed the check: no NUL inside */
        if (req->body_case == KBSYNC__REQUEST__BODY_UPSERT)
            for (size_t i = 0; i < req->upsert->n_docs; i++)
                if (req->upsert->docs[i]->id &&
                    kb_utf8_check(req->upsert->docs[i]->id,
                                  strlen(req->upsert->docs[i]->id)) !=
                        strlen(req->upsert->docs[i]->id))
                    __builtin_trap();
        kbsync__request__free_unpacked(req, NULL);
    }
    Kbsync__ReplMessage *m = kbsync__repl_message__unpack(NULL, len, data);
    if (m)
        kbsync__repl_message__free_unpacked(m, NULL);
    (void)kb_wire_check_strings(&kbsync__repl_message__descriptor, data, len,
                                err, sizeof err);
    (void)kb_wire_peek_u64(data, len, 1);
    {
        /* whatever it finds lies inside the input */
        const void *b = NULL;
        size_t bl = 0;
        if (kb_wire_peek_bytes(data, len, 4, &b, &bl) == 0 &&
            ((const uint8_t *)b < data || bl > len ||
             (const uint8_t *)b + bl > data + len))
            __builtin_trap();
    }
    (void)kb_utf8_check((const char *)data, len);
    return 0;
}
