#ifndef CAID_CLIBCRYPTO_SHIM_H
#define CAID_CLIBCRYPTO_SHIM_H
// OpenSSL's libcrypto (Debian 12: 3.0) for gocryptfs's content blocks: AES-256-GCM with a 16-byte nonce whose key
// schedule is set up once per context, not once per 4 KiB block as swift-crypto's one-shot `AES.GCM.open` does.
// gocryptfs itself goes the same way for speed (its `internal/stupidgcm`, OpenSSL through cgo).
#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

/// A decryption context for AES-256-GCM with 16-byte nonces under `key` (32 bytes); NULL when OpenSSL refuses.
/// Not thread-safe: one per thread. `caid_gcm_free` wipes the key schedule (EVP_CIPHER_CTX_free cleanses it).
static inline EVP_CIPHER_CTX *caid_gcm_new(const uint8_t *key) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) return NULL;
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 16, NULL) != 1
        || EVP_DecryptInit_ex(ctx, NULL, NULL, key, NULL) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static inline void caid_gcm_free(EVP_CIPHER_CTX *ctx) {
    EVP_CIPHER_CTX_free(ctx);
}

/// Opens one block laid out as gocryptfs stores it, nonce (16) ‖ ciphertext ‖ tag (16), writing `length - 32`
/// bytes to `out`. Returns 1 when the tag verifies; otherwise 0, and `out` holds bytes that must not be used.
static inline int caid_gcm_open_block(EVP_CIPHER_CTX *ctx, const uint8_t *block, size_t length,
                                      const uint8_t *aad, size_t aad_length, uint8_t *out) {
    if (length < 32) return 0;
    const size_t body = length - 32;
    int n = 0;
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, block) != 1) return 0;
    if (EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_length) != 1) return 0;
    if (body > 0 && EVP_DecryptUpdate(ctx, out, &n, block + 16, (int)body) != 1) return 0;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, (void *)(block + 16 + body)) != 1) return 0;
    return EVP_DecryptFinal_ex(ctx, out + n, &n) == 1;
}
#endif
