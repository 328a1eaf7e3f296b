#ifndef CAID_CLIBCRYPTO_SHIM_H
#define CAID_CLIBCRYPTO_SHIM_H
// OpenSSL's libcrypto for gocryptfs's content blocks: AES-256-GCM with a 16-byte nonce whose key schedule is set up
// once per context, not once per 4 KiB block as swift-crypto's one-shot `AES.GCM.open` does. gocryptfs goes the same
// way for speed (its `internal/stupidgcm`, OpenSSL through cgo).
//
// The library is loaded at run time, not linked: OpenSSL 3 (Debian 12, `libcrypto.so.3`) or 1.1 (Alibaba Cloud
// Linux 3 and its RHEL 8 base, `libcrypto.so.1.1`), whose EVP functions used here have the same signatures and
// control numbers. Without either, caid reads through swift-crypto (slower, same bytes). The header (libssl-dev) is
// needed only to build.
#include <dlfcn.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/// The EVP functions caid calls, resolved from the libcrypto found at run time.
typedef struct caid_libcrypto {
    EVP_CIPHER_CTX *(*ctx_new)(void);
    void (*ctx_free)(EVP_CIPHER_CTX *);
    const EVP_CIPHER *(*aes_256_gcm)(void);
    int (*decrypt_init)(EVP_CIPHER_CTX *, const EVP_CIPHER *, ENGINE *, const unsigned char *, const unsigned char *);
    int (*ctrl)(EVP_CIPHER_CTX *, int, int, void *);
    int (*decrypt_update)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int);
    int (*decrypt_final)(EVP_CIPHER_CTX *, unsigned char *, int *);
    const char *soname;
} caid_libcrypto;

// The state lives in a function's statics: Swift's importer emits a header's inline functions, not its globals.
typedef struct caid_libcrypto_state_t {
    caid_libcrypto table;
    int loaded;
    pthread_once_t once;
} caid_libcrypto_state_t;

static inline caid_libcrypto_state_t *caid_libcrypto_state(void) {
    static caid_libcrypto_state_t state = {.loaded = 0, .once = PTHREAD_ONCE_INIT};
    return &state;
}

static inline void caid_libcrypto_load(void) {
    static const char *const names[] = {"libcrypto.so.3", "libcrypto.so.1.1"};
    caid_libcrypto_state_t *state = caid_libcrypto_state();
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *handle = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (handle == NULL) continue;
        caid_libcrypto t;
        *(void **)&t.ctx_new = dlsym(handle, "EVP_CIPHER_CTX_new");
        *(void **)&t.ctx_free = dlsym(handle, "EVP_CIPHER_CTX_free");
        *(void **)&t.aes_256_gcm = dlsym(handle, "EVP_aes_256_gcm");
        *(void **)&t.decrypt_init = dlsym(handle, "EVP_DecryptInit_ex");
        *(void **)&t.ctrl = dlsym(handle, "EVP_CIPHER_CTX_ctrl");
        *(void **)&t.decrypt_update = dlsym(handle, "EVP_DecryptUpdate");
        *(void **)&t.decrypt_final = dlsym(handle, "EVP_DecryptFinal_ex");
        t.soname = names[i];
        if (t.ctx_new && t.ctx_free && t.aes_256_gcm && t.decrypt_init && t.ctrl && t.decrypt_update && t.decrypt_final) {
            state->table = t;
            state->loaded = 1;
            return;
        }
        dlclose(handle);
    }
}

/// The loaded functions, or NULL: then reads go through swift-crypto.
static inline const caid_libcrypto *caid_libcrypto_get(void) {
    caid_libcrypto_state_t *state = caid_libcrypto_state();
    pthread_once(&state->once, caid_libcrypto_load);
    return state->loaded ? &state->table : NULL;
}

/// The libcrypto caid found ("libcrypto.so.3", "libcrypto.so.1.1"), or NULL.
static inline const char *caid_libcrypto_soname(void) {
    const caid_libcrypto *lib = caid_libcrypto_get();
    return lib ? lib->soname : NULL;
}

/// A decryption context for AES-256-GCM with 16-byte nonces under `key` (32 bytes); NULL without libcrypto or when
/// it refuses. Not thread-safe: one per thread. `caid_gcm_free` wipes the key schedule (EVP_CIPHER_CTX_free cleanses).
static inline EVP_CIPHER_CTX *caid_gcm_new(const uint8_t *key) {
    const caid_libcrypto *lib = caid_libcrypto_get();
    if (lib == NULL) return NULL;
    EVP_CIPHER_CTX *ctx = lib->ctx_new();
    if (ctx == NULL) return NULL;
    if (lib->decrypt_init(ctx, lib->aes_256_gcm(), NULL, NULL, NULL) != 1
        || lib->ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 16, NULL) != 1
        || lib->decrypt_init(ctx, NULL, NULL, key, NULL) != 1) {
        lib->ctx_free(ctx);
        return NULL;
    }
    return ctx;
}

static inline void caid_gcm_free(EVP_CIPHER_CTX *ctx) {
    if (ctx != NULL) caid_libcrypto_state()->table.ctx_free(ctx);
}

/// Opens one block laid out as gocryptfs stores it, nonce (16) ‖ ciphertext ‖ tag (16), writing `length - 32`
/// bytes to `out`. Returns 1 when the tag verifies; otherwise 0, and `out` holds bytes that must not be used.
static inline int caid_gcm_open_block(EVP_CIPHER_CTX *ctx, const uint8_t *block, size_t length,
                                      const uint8_t *aad, size_t aad_length, uint8_t *out) {
    // Called per 4 KiB block: a context exists only once the library is loaded, so no pthread_once here.
    if (ctx == NULL || length < 32) return 0;
    const caid_libcrypto *lib = &caid_libcrypto_state()->table;
    const size_t body = length - 32;
    int n = 0;
    if (lib->decrypt_init(ctx, NULL, NULL, NULL, block) != 1) return 0;
    if (lib->decrypt_update(ctx, NULL, &n, aad, (int)aad_length) != 1) return 0;
    if (body > 0 && lib->decrypt_update(ctx, out, &n, block + 16, (int)body) != 1) return 0;
    if (lib->ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, (void *)(block + 16 + body)) != 1) return 0;
    return lib->decrypt_final(ctx, out + n, &n) == 1;
}
#endif
