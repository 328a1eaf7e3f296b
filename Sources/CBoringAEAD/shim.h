#ifndef CAID_CBORINGAEAD_SHIM_H
#define CAID_CBORINGAEAD_SHIM_H
// BoringSSL's AES-256-GCM AEAD for gocryptfs's content blocks, with the key schedule set up once per context, not once
// per 4 KiB block as swift-crypto's one-shot `AES.GCM.open` does. gocryptfs goes a similar way for speed (its
// `internal/stupidgcm`, OpenSSL through cgo).
//
// The implementation is the copy of BoringSSL that swift-crypto builds into caid on Linux (its target
// CCryptoBoringSSL; Package.swift and Sources/CCryptoBoringSSL of apple/swift-crypto 4.5.2), whose every symbol
// swift-crypto's vendoring script prefixes with `CCryptoBoringSSL_` (scripts/vendor-boringssl.sh,
// include/CCryptoBoringSSL_boringssl_prefix_symbols.h). The four functions caid calls are declared here with opaque
// types, as include/CCryptoBoringSSL_aead.h declares them; a swift-crypto that renamed them fails at link time, not
// at run time. That copy has BoringSSL's VAES/AVX-512 GCM (gen/bcm/aes-gcm-avx512-x86_64-linux.S): about twice as
// fast on 4 KiB blocks as Debian 12's OpenSSL 3.0 on the same core (docs/benchmarks.md, "Mount read throughput").
//
// Facts relied on, from crypto/fipsmodule/cipher/aead.cc.inc and e_aes.cc.inc of that copy: AES-GCM open takes any
// nonce length but zero (gocryptfs's is 16 bytes, as swift-crypto's `AES.GCM.Nonce` also allows); a failed open
// clears `out`; `EVP_AEAD_CTX_free` cleanses the context, key schedule included (OPENSSL_free zeroes what it frees);
// open takes the context as const, so one context may serve several threads.
#include <stddef.h>
#include <stdint.h>

typedef struct caid_evp_aead caid_evp_aead;
typedef struct caid_evp_aead_ctx caid_evp_aead_ctx;

extern const caid_evp_aead *CCryptoBoringSSL_EVP_aead_aes_256_gcm(void);
extern caid_evp_aead_ctx *CCryptoBoringSSL_EVP_AEAD_CTX_new(const caid_evp_aead *aead, const uint8_t *key, size_t key_len, size_t tag_len);
extern void CCryptoBoringSSL_EVP_AEAD_CTX_free(caid_evp_aead_ctx *ctx);
extern int CCryptoBoringSSL_EVP_AEAD_CTX_open(const caid_evp_aead_ctx *ctx, uint8_t *out, size_t *out_len, size_t max_out_len,
                                              const uint8_t *nonce, size_t nonce_len, const uint8_t *in, size_t in_len,
                                              const uint8_t *ad, size_t ad_len);

/// A context that opens AES-256-GCM blocks with 16-byte tags under `key` (32 bytes); NULL if BoringSSL refuses it
/// (it does not for a 32-byte key). `caid_gcm_free` wipes the key schedule.
static inline caid_evp_aead_ctx *caid_gcm_new(const uint8_t *key) {
    return CCryptoBoringSSL_EVP_AEAD_CTX_new(CCryptoBoringSSL_EVP_aead_aes_256_gcm(), key, 32, 16);
}

static inline void caid_gcm_free(caid_evp_aead_ctx *ctx) {
    if (ctx != NULL) CCryptoBoringSSL_EVP_AEAD_CTX_free(ctx);
}

/// Opens one block laid out as gocryptfs stores it, nonce (16) ‖ ciphertext ‖ tag (16), writing `length - 32`
/// bytes to `out`, which must not overlap `block`. Returns 1 when the tag verifies; otherwise 0, and `out` holds
/// nothing to use (BoringSSL clears it).
static inline int caid_gcm_open_block(const caid_evp_aead_ctx *ctx, const uint8_t *block, size_t length,
                                      const uint8_t *aad, size_t aad_length, uint8_t *out) {
    if (ctx == NULL || length < 32) return 0;
    size_t written = 0;
    return CCryptoBoringSSL_EVP_AEAD_CTX_open(ctx, out, &written, length - 32, block, 16, block + 16, length - 16, aad, aad_length) == 1
        && written == length - 32;
}
#endif
