/* lutllm C API: load a GGUF model, evaluate token ids, sample, free (liblutllm.so).
 * It does not tokenize: callers pass token ids (make them with the Python tokenizer or their own).
 *
 * Every function that can fail returns a negative LUTLLM_ERR_* code (or NULL) and records a message
 * readable with lutllm_last_error() on the same thread. Handles are not thread-safe: use one
 * lutllm_model per thread, or lock around calls. Only lutllm_cancel may be called from another thread.
 */
#ifndef LUTLLM_H
#define LUTLLM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LUTLLM_API __attribute__((visibility("default")))
#else
#define LUTLLM_API
#endif

#define LUTLLM_OK 0
#define LUTLLM_ERR_ARGUMENT (-1)  /* a null pointer, a count or id out of range */
#define LUTLLM_ERR_MODEL (-2)     /* the file is missing, not GGUF, or not a supported model */
#define LUTLLM_ERR_CONTEXT (-3)   /* positions past the context size */
#define LUTLLM_ERR_CANCELLED (-4) /* lutllm_cancel stopped the evaluation */
#define LUTLLM_ERR_INTERNAL (-5)  /* out of memory or an unexpected failure */

typedef struct lutllm_model lutllm_model; /* weights (memory-mapped) + one KV cache */

/* Loads `path`. n_ctx 0 = min(training context, 4096); n_threads 0 = physical cores.
 * Returns NULL on failure; then *err (when err is not NULL) points at the message, valid until the
 * next call on this thread. */
LUTLLM_API lutllm_model* lutllm_load(const char* path, int32_t n_ctx, int32_t n_threads, const char** err);
LUTLLM_API void lutllm_free(lutllm_model* model); /* NULL is ignored */

LUTLLM_API int32_t lutllm_n_vocab(const lutllm_model* model); /* negative error code on NULL */
LUTLLM_API int32_t lutllm_n_ctx(const lutllm_model* model);
LUTLLM_API int32_t lutllm_token_eos(const lutllm_model* model); /* -1 when the model defines none */

/* Evaluates tokens[0..n) at positions pos..pos+n-1 (the cache keeps positions < pos) and writes
 * the n_vocab logits of the last token into `logits` (may be NULL). */
LUTLLM_API int32_t lutllm_eval(lutllm_model* model, const int32_t* tokens, int32_t n, int32_t pos, float* logits);

/* Picks a token from n_vocab logits: argmax when temperature <= 0, else a draw from
 * softmax(logits / temperature) using and advancing *rng_state (any seed value). */
LUTLLM_API int32_t lutllm_sample(const float* logits, int32_t n_vocab, float temperature, uint64_t* rng_state,
                                 int32_t* token);

/* Evaluates the prompt from position 0 and generates up to max_tokens tokens into out, stopping
 * after the end-of-sequence token (not written). *n_out receives the count. */
LUTLLM_API int32_t lutllm_generate(lutllm_model* model, const int32_t* prompt, int32_t n_prompt, int32_t max_tokens,
                                   float temperature, uint64_t seed, int32_t* out, int32_t* n_out);

LUTLLM_API void lutllm_cancel(lutllm_model* model); /* from any thread: stops a running eval */
LUTLLM_API const char* lutllm_last_error(void);      /* "" when the last call succeeded */

#ifdef __cplusplus
}
#endif
#endif /* LUTLLM_H */
