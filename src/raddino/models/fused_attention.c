/* Fused self-attention for bf16 inference on CPUs with AVX512-BF16 (no AMX needed).
 *
 * out = softmax(q k^T) v for every (image, head), with q already scaled by 1/sqrt(d), reading
 * q, k and v straight from the qkv projection's output and writing the heads side by side, as
 * the projection after attention reads them:
 *
 *   qkv: (batch, tokens, 3, heads, 64) bf16, contiguous      out: (batch, tokens, heads, 64) bf16
 *
 * Per (image, head), one thread: k and v are packed once into the pair-interleaved layout that
 * VDPBF16PS multiplies; then for each block of ROWS queries the scores against all keys are
 * computed in fp32 (ROWS x KEY_VECTORS*16 tiles of accumulators), kept in a small buffer that
 * stays in L1, turned into weights exp(s - max) (fp32, stored as bf16), multiplied with v,
 * and the rows are divided by their sums at the end. The scores never leave the core's caches
 * and are never rounded to bf16, unlike oneDNN's decomposed kernel on these CPUs.
 * Built and loaded by raddino/models/fused_attention.py.
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HEAD_DIM 64
#define PAIRS (HEAD_DIM / 2)
#define ROWS 4        /* query rows per block: their fp32 scores (4 x 1,408 at 518 px) fit L1 */
#define KEY_VECTORS 4 /* 16-key vectors per tile of scores */
#define MAX_THREADS 256

typedef uint16_t bf16;

/* exp(x - max) = 2^(x log2(e) - shift), shift = max log2(e), in fp32; floored at 2^-125 (the
 * padding keys' -inf included), while a NaN score stays NaN, so a NaN in q or k spreads to the
 * outputs as in PyTorch's attention. 2^f on [-0.5, 0.5] by a cubic: relative error 8e-5, below the
 * 2^-9 rounding of the bf16 weight it becomes. */
static inline __m512 exp_ps(__m512 x, __m512 shift) {
    __m512 t = _mm512_fmsub_ps(x, _mm512_set1_ps(1.44269504088896341f), shift);
    t = _mm512_max_ps(_mm512_set1_ps(-125.0f), t); /* vmaxps returns t if t is NaN */
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(0.05508873f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24260435f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.69327626f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.99992892f));
    return _mm512_scalef_ps(p, n);
}

typedef struct {
    int tokens, padded; /* padded: tokens rounded up to KEY_VECTORS * 16 */
    int used;           /* tokens rounded up to 32: the keys the weights cover */
    long row;           /* elements between consecutive tokens' q (and k, v) */
    long out_row;       /* elements between consecutive tokens' outputs */
    bf16 *k_packed;     /* [padded / 16][PAIRS][16][2] */
    bf16 *v_packed;     /* [padded / 2][HEAD_DIM][2] */
    float *scores;      /* [ROWS][padded] */
    bf16 *weights;      /* [ROWS][padded] */
} Scratch;

static void pack_keys(const bf16 *k, const Scratch *s) {
    /* one gather per (16 keys, dimension pair): lane j takes key j's pair as one dword */
    const int *dwords = (const int *)k;
    __m512i lanes = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32((int)(s->row / 2)));
    for (int vec = 0; vec < s->padded / 16; vec++) {
        int valid = s->tokens - vec * 16;
        valid = valid < 0 ? 0 : (valid > 16 ? 16 : valid);
        __mmask16 mask = (__mmask16)((1u << valid) - 1u);
        const int *base = dwords + (long)vec * 16 * (s->row / 2);
        int *dst = (int *)(s->k_packed + (long)vec * PAIRS * 32);
        for (int pair = 0; pair < PAIRS; pair++) {
            __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, lanes, base + pair, 4);
            _mm512_storeu_si512(dst + pair * 16, g);
        }
    }
}

static void pack_values(const bf16 *v, const Scratch *s) {
    /* interleave tokens 2j and 2j+1 dimension by dimension */
    static const uint16_t first_half[32] = {0,  32, 1,  33, 2,  34, 3,  35, 4,  36, 5,
                                            37, 6,  38, 7,  39, 8,  40, 9,  41, 10, 42,
                                            11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    const __m512i lo = _mm512_loadu_si512(first_half);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    for (int pair = 0; pair < s->padded / 2; pair++) {
        int t = 2 * pair;
        bf16 *dst = s->v_packed + (long)pair * HEAD_DIM * 2;
        for (int half = 0; half < 2; half++) {
            __m512i a = t < s->tokens ? _mm512_loadu_si512(v + t * s->row + half * 32)
                                      : _mm512_setzero_si512();
            __m512i b = t + 1 < s->tokens ? _mm512_loadu_si512(v + (t + 1) * s->row + half * 32)
                                          : _mm512_setzero_si512();
            _mm512_storeu_si512(dst + half * 64, _mm512_permutex2var_epi16(a, lo, b));
            _mm512_storeu_si512(dst + half * 64 + 32, _mm512_permutex2var_epi16(a, hi, b));
        }
    }
}

/* scores of ROWS queries against every key, in s->scores; returns each row's maximum */
static void score_rows(const bf16 *q, int first, const Scratch *s, float *row_max) {
    int32_t query[ROWS][PAIRS];
    for (int r = 0; r < ROWS; r++) {
        int t = first + r < s->tokens ? first + r : first; /* past the end: a stand-in row */
        memcpy(query[r], q + t * s->row, HEAD_DIM * sizeof(bf16));
    }
    __m512 maximum[ROWS];
    for (int r = 0; r < ROWS; r++) maximum[r] = _mm512_set1_ps(-INFINITY);
    for (int vec = 0; vec < s->padded / 16; vec += KEY_VECTORS) {
        __m512 acc[ROWS][KEY_VECTORS];
        for (int r = 0; r < ROWS; r++)
            for (int c = 0; c < KEY_VECTORS; c++) acc[r][c] = _mm512_setzero_ps();
        const bf16 *keys = s->k_packed + (long)vec * PAIRS * 32;
        for (int pair = 0; pair < PAIRS; pair++) {
            __m512bh b[KEY_VECTORS];
            for (int c = 0; c < KEY_VECTORS; c++)
                b[c] = (__m512bh)_mm512_loadu_si512(keys + (long)c * PAIRS * 32 + pair * 32);
            for (int r = 0; r < ROWS; r++) {
                __m512bh a = (__m512bh)_mm512_set1_epi32(query[r][pair]);
                for (int c = 0; c < KEY_VECTORS; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, b[c]);
            }
        }
        for (int c = 0; c < KEY_VECTORS; c++) {
            int valid = s->tokens - (vec + c) * 16;
            if (valid < 16) { /* padding keys: no weight */
                __mmask16 mask = (__mmask16)((1u << (valid < 0 ? 0 : valid)) - 1u);
                for (int r = 0; r < ROWS; r++)
                    acc[r][c] = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), mask, acc[r][c]);
            }
        }
        for (int r = 0; r < ROWS; r++)
            for (int c = 0; c < KEY_VECTORS; c++) {
                _mm512_storeu_ps(s->scores + (long)r * s->padded + (vec + c) * 16, acc[r][c]);
                maximum[r] = _mm512_max_ps(maximum[r], acc[r][c]);
            }
    }
    for (int r = 0; r < ROWS; r++) row_max[r] = _mm512_reduce_max_ps(maximum[r]);
}

/* weights = exp(scores - max) as bf16; returns 1 / sum of each row */
static void softmax_rows(const Scratch *s, const float *row_max, float *inverse_sum) {
    for (int r = 0; r < ROWS; r++) {
        const float *row = s->scores + (long)r * s->padded;
        bf16 *out = s->weights + (long)r * s->padded;
        __m512 m = _mm512_set1_ps(row_max[r] * 1.44269504088896341f);
        __m512 sum = _mm512_setzero_ps();
        for (int j = 0; j < s->used; j += 32) {
            __m512 e0 = exp_ps(_mm512_loadu_ps(row + j), m);
            __m512 e1 = exp_ps(_mm512_loadu_ps(row + j + 16), m);
            sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
            _mm512_storeu_si512(out + j, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
        }
        inverse_sum[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }
}

/* out rows = weights @ v / sum, for the rows of this block that exist */
static void weigh_values(int first, const Scratch *s, const float *inverse_sum, bf16 *out) {
    __m512 acc[ROWS][4];
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
    for (int pair = 0; pair < s->used / 2; pair++) {
        const bf16 *values = s->v_packed + (long)pair * HEAD_DIM * 2;
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(values);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(values + 32);
        __m512bh b2 = (__m512bh)_mm512_loadu_si512(values + 64);
        __m512bh b3 = (__m512bh)_mm512_loadu_si512(values + 96);
        for (int r = 0; r < ROWS; r++) {
            int32_t w;
            memcpy(&w, s->weights + (long)r * s->padded + 2 * pair, sizeof w);
            __m512bh a = (__m512bh)_mm512_set1_epi32(w);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], a, b2);
            acc[r][3] = _mm512_dpbf16_ps(acc[r][3], a, b3);
        }
    }
    for (int r = 0; r < ROWS && first + r < s->tokens; r++) {
        __m512 scale = _mm512_set1_ps(inverse_sum[r]);
        bf16 *dst = out + (long)(first + r) * s->out_row;
        for (int c = 0; c < 4; c++) {
            __m256bh h = _mm512_cvtneps_pbh(_mm512_mul_ps(acc[r][c], scale));
            _mm256_storeu_si256((__m256i *)(dst + c * 16), (__m256i)h);
        }
    }
}

static void attend_head(const bf16 *q, const bf16 *k, const bf16 *v, bf16 *out, Scratch *s) {
    pack_keys(k, s);
    pack_values(v, s);
    float row_max[ROWS], inverse_sum[ROWS];
    for (int first = 0; first < s->tokens; first += ROWS) {
        score_rows(q, first, s, row_max);
        softmax_rows(s, row_max, inverse_sum);
        weigh_values(first, s, inverse_sum, out);
    }
}

typedef struct {
    const bf16 *qkv;
    bf16 *out;
    int tokens, heads, first, last; /* this thread's (image, head) items: [first, last) */
    int status;
} Job;

static void *run_job(void *arg) {
    Job *job = arg;
    int padded = (job->tokens + 16 * KEY_VECTORS - 1) / (16 * KEY_VECTORS) * (16 * KEY_VECTORS);
    Scratch s = {job->tokens, padded, (job->tokens + 31) / 32 * 32, 3L * job->heads * HEAD_DIM,
                 (long)job->heads * HEAD_DIM,
                 aligned_alloc(64, (size_t)padded * HEAD_DIM * sizeof(bf16)),
                 aligned_alloc(64, (size_t)padded * HEAD_DIM * sizeof(bf16)),
                 aligned_alloc(64, (size_t)ROWS * padded * sizeof(float)),
                 aligned_alloc(64, (size_t)ROWS * padded * sizeof(bf16))};
    job->status = s.k_packed && s.v_packed && s.scores && s.weights ? 0 : -1;
    for (int item = job->first; item < job->last && job->status == 0; item++) {
        long image = item / job->heads, head = item % job->heads;
        const bf16 *q = job->qkv + image * job->tokens * s.row + head * HEAD_DIM;
        const bf16 *k = q + (long)job->heads * HEAD_DIM;
        const bf16 *v = k + (long)job->heads * HEAD_DIM;
        attend_head(q, k, v, job->out + image * job->tokens * s.out_row + head * HEAD_DIM, &s);
    }
    free(s.k_packed);
    free(s.v_packed);
    free(s.scores);
    free(s.weights);
    return NULL;
}

/* Returns 0, or -1 if scratch memory could not be had (out is then incomplete). */
int raddino_attention_bf16(const bf16 *qkv, bf16 *out, int batch, int tokens, int heads, int threads) {
    int items = batch * heads;
    threads = threads < 1 ? 1 : (threads > MAX_THREADS ? MAX_THREADS : threads);
    threads = threads > items ? items : threads;
    Job jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int i = 0; i < threads; i++)
        jobs[i] = (Job){qkv, out, tokens, heads, (int)((long)items * i / threads),
                        (int)((long)items * (i + 1) / threads), 0};
    for (int i = 1; i < threads; i++)
        started[i] = pthread_create(&ids[i], NULL, run_job, &jobs[i]) == 0;
    run_job(&jobs[0]);
    int status = jobs[0].status;
    for (int i = 1; i < threads; i++) {
        if (started[i])
            pthread_join(ids[i], NULL);
        else /* no thread to be had: this one does that share too */
            run_job(&jobs[i]);
        status |= jobs[i].status;
    }
    return status;
}
