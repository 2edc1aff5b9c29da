/*
 * gemm_threads.c: the GEMM's packing buffers and its worker pool (plain C and POSIX threads;
 * no Python, so tests/native/test_kernels.c links it too).
 *
 * A split product runs as a few tasks (parts of C) that the caller and the pool's workers
 * claim one at a time from a shared counter. The caller always claims tasks itself, so when
 * the workers cannot run (other processes hold the cores) it ends up doing every part on its
 * own thread: never slower than one thread, and the same bits either way. Between products a
 * worker polls a few microseconds, then keeps polling for up to POOL_LINGER_NS while yielding
 * its core to any other runnable thread at every poll, then sleeps on a condition variable:
 * a worker that spins without yielding while the process's other thread waits for its core
 * starves both of them, and one that sleeps at once pays the wake-up (~90 us on this VM)
 * on every product.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1 /* sched_getaffinity */
#endif
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sched.h> /* sched_yield; sched_getaffinity on Linux */
#include <unistd.h>

#include "kernels.h"

/* ------------------------------------------------------------------------ */
/* Packing buffers                                                          */
/* ------------------------------------------------------------------------ */

/* Per-thread packing buffers, kept between calls: allocating (and page faulting) megabytes
 * on every call would cost a noticeable fraction of a layer-sized GEMM. Thread-local so
 * concurrent calls from several threads never share them; freed at thread exit. */
typedef struct {
    float *a, *b;
    size_t a_capacity, b_capacity; /* in floats */
} scratch_buffers;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_made = 0;

static void scratch_free(void *pointer)
{
    scratch_buffers *s = (scratch_buffers *)pointer;
    free(s->a);
    free(s->b);
    free(s);
}

static void scratch_init(void) { scratch_key_made = pthread_key_create(&scratch_key, scratch_free) == 0; }

static int ensure_buffer(float **buffer, size_t *capacity, size_t need)
{
    if (*capacity >= need)
        return 0;
    void *fresh = NULL;
    if (posix_memalign(&fresh, 64, (need ? need : 1) * sizeof(float)) != 0)
        return -1;
    free(*buffer);
    *buffer = (float *)fresh;
    *capacity = need;
    return 0;
}

int gemm_scratch(size_t a_floats, size_t b_floats, float **a, float **b)
{
    pthread_once(&scratch_once, scratch_init);
    if (!scratch_key_made)
        return -1;
    scratch_buffers *s = (scratch_buffers *)pthread_getspecific(scratch_key);
    if (!s) {
        s = (scratch_buffers *)calloc(1, sizeof(*s));
        if (!s || pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            return -1;
        }
    }
    if (ensure_buffer(&s->a, &s->a_capacity, a_floats) ||
        ensure_buffer(&s->b, &s->b_capacity, b_floats))
        return -1;
    *a = s->a;
    *b = s->b;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The worker pool                                                          */
/* ------------------------------------------------------------------------ */

static int count_usable_cores(void)
{
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int count = CPU_COUNT(&set);
        return count > 0 ? count : 1;
    }
#endif
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)online : 1;
}

/* Counted once (a system call); a benign race: every thread counts the same. */
int usable_cores(void)
{
    static int cores = 0;
    int known = __atomic_load_n(&cores, __ATOMIC_RELAXED);
    if (!known) {
        known = count_usable_cores();
        __atomic_store_n(&cores, known, __ATOMIC_RELAXED);
    }
    return known;
}

typedef void (*task_fn)(void *arg);

/* One round of tasks at a time (pool_busy); a caller that finds the pool busy (another
 * thread's product) runs its tasks on its own thread. After fork() the child starts a new
 * pool. Shared fields are written under `lock`; claimed and finished are atomic. */
static struct {
    pthread_mutex_t busy, lock;
    pthread_cond_t wake, done;
    int started;              /* workers running */
    int generation;           /* one more per round (wraps) */
    int open;                 /* a round is under way: workers may join it */
    int joined;               /* workers inside the current round (written under lock,
                                 read atomically by the caller's poll) */
    task_fn task;
    char *args;
    size_t arg_size;
    int tasks, claimed, finished;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
          PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, NULL, NULL, 0, 0, 0, 0};
static pthread_once_t pool_fork_once = PTHREAD_ONCE_INIT;

static void pool_after_fork_in_child(void)
{
    pthread_mutex_init(&pool.busy, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.started = 0;
    pool.open = 0;
    pool.joined = 0;
}

static void pool_register_fork(void) { pthread_atfork(NULL, NULL, pool_after_fork_in_child); }

/* Polls before sleeping, for POOL_SPIN_NS of wall time (pause instructions take from a few
 * to ~150 cycles depending on the CPU, so the poll is timed, not counted), then for
 * POOL_LINGER_NS more with a sched_yield() between polls. Waking a sleeping worker took ~90 us
 * here (a halted vCPU), a tenth of the mlp's 128 x 500 x 784 product; the products of one
 * training step or inference pass come within ~300 us of each other. Yielding keeps the
 * linger from taking a core another thread wants; the thread policy (threads.py) already
 * grants one thread, so no round and no linger, while other processes hold a core. */
#ifndef POOL_SPIN_NS
#define POOL_SPIN_NS 5000
#endif
#ifndef POOL_LINGER_NS
#define POOL_LINGER_NS 300000
#endif
#ifndef POOL_AWAIT_NS
#define POOL_AWAIT_NS 100000
#endif

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static long long monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* Polls until *value != unchanged or `budget_ns` of wall time is over; whether it changed.
 * With `yielding`, each poll also offers the core to any other runnable thread. */
static int spin_while_equal(const int *value, int unchanged, long long budget_ns, int yielding)
{
    long long deadline = monotonic_ns() + budget_ns;
    for (;;) {
        for (int i = 0; i < 16; i++) {
            if (__atomic_load_n(value, __ATOMIC_ACQUIRE) != unchanged)
                return 1;
            cpu_relax();
        }
        if (monotonic_ns() > deadline)
            return 0;
        if (yielding)
            sched_yield();
    }
}

/* Claim and run tasks of the current round until none is left. */
static void claim_tasks(task_fn task, char *args, size_t arg_size, int tasks)
{
    for (;;) {
        int t = __atomic_fetch_add(&pool.claimed, 1, __ATOMIC_ACQ_REL);
        if (t >= tasks)
            return;
        task(args + (size_t)t * arg_size);
        if (__atomic_add_fetch(&pool.finished, 1, __ATOMIC_ACQ_REL) == tasks) {
            pthread_mutex_lock(&pool.lock);
            pthread_cond_broadcast(&pool.done);
            pthread_mutex_unlock(&pool.lock);
        }
    }
}

static void *pool_worker(void *unused)
{
    (void)unused;
    int seen = 0;
    for (;;) {
        if (!spin_while_equal(&pool.generation, seen, POOL_SPIN_NS, 0))
            spin_while_equal(&pool.generation, seen, POOL_LINGER_NS, 1);
        pthread_mutex_lock(&pool.lock);
        while (pool.generation == seen || !pool.open)
            pthread_cond_wait(&pool.wake, &pool.lock);
        seen = pool.generation;
        __atomic_add_fetch(&pool.joined, 1, __ATOMIC_RELEASE);
        task_fn task = pool.task;
        char *args = pool.args;
        size_t arg_size = pool.arg_size;
        int tasks = pool.tasks;
        pthread_mutex_unlock(&pool.lock);

        claim_tasks(task, args, arg_size, tasks);

        pthread_mutex_lock(&pool.lock);
        __atomic_sub_fetch(&pool.joined, 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&pool.done);
        pthread_mutex_unlock(&pool.lock);
    }
    return NULL;
}

/* Every task finished, and no worker is still reading this round's fields. */
static int round_over(int tasks)
{
    return __atomic_load_n(&pool.finished, __ATOMIC_ACQUIRE) >= tasks &&
           __atomic_load_n(&pool.joined, __ATOMIC_ACQUIRE) == 0;
}

/* The caller's wait for the workers' last parts: polls (yielding) while the round makes
 * progress, so that the caller does not pay a wake-up of its own; returns when the round is
 * over or has stalled for POOL_AWAIT_NS (the caller then sleeps on `done`). */
static void await_round(int tasks)
{
    int finished = -1, joined = -1;
    long long deadline = 0;
    while (!round_over(tasks)) {
        int now_finished = __atomic_load_n(&pool.finished, __ATOMIC_ACQUIRE);
        int now_joined = __atomic_load_n(&pool.joined, __ATOMIC_ACQUIRE);
        if (now_finished != finished || now_joined != joined) {
            finished = now_finished;
            joined = now_joined;
            deadline = monotonic_ns() + POOL_AWAIT_NS;
        } else if (monotonic_ns() > deadline) {
            return;
        }
        for (int i = 0; i < 16; i++)
            cpu_relax();
        sched_yield();
    }
}

/* Runs task(args + t arg_size) for t < tasks, on this thread and up to tasks - 1 workers
 * (fewer when the process may use fewer cores). */
static void run_tasks(task_fn task, void *args, size_t arg_size, int tasks)
{
    char *base = (char *)args;
    int helpers = tasks - 1, cores = usable_cores();
    if (helpers > cores - 1)
        helpers = cores - 1;
    if (helpers < 1 || pthread_mutex_trylock(&pool.busy) != 0) {
        for (int t = 0; t < tasks; t++)
            task(base + (size_t)t * arg_size);
        return;
    }
    pthread_once(&pool_fork_once, pool_register_fork);
    pthread_mutex_lock(&pool.lock);
    while (pool.started < helpers) {
        pthread_t id;
        if (pthread_create(&id, NULL, pool_worker, NULL) != 0)
            break;
        pthread_detach(id);
        pool.started++;
    }
    pool.task = task;
    pool.args = base;
    pool.arg_size = arg_size;
    pool.tasks = tasks;
    __atomic_store_n(&pool.claimed, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&pool.finished, 0, __ATOMIC_RELAXED);
    pool.open = 1;
    __atomic_store_n(&pool.generation, (int)((unsigned)pool.generation + 1u), __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);

    claim_tasks(task, base, arg_size, tasks);

    await_round(tasks);
    pthread_mutex_lock(&pool.lock);
    while (!round_over(tasks))
        pthread_cond_wait(&pool.done, &pool.lock);
    pool.open = 0;
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.busy);
}

/* ------------------------------------------------------------------------ */
/* Split and stacked products                                               */
/* ------------------------------------------------------------------------ */

#define MAX_GEMM_THREADS 64

/* A whole product's algorithm is chosen once, on its own shape, before any split: a part of a
 * wider product must not switch to the dot-product path (its sums run in another order). */
static int is_narrow(const gemm_shape *s)
{
    return !s->trans_a && s->trans_b && s->n <= GEMM_DOT_N && s->k > 0;
}

/* One product, or one part of one, on this thread by the algorithm chosen for the whole. */
static int run_product(const gemm_level *level, const gemm_blocking *blocking, int narrow,
                       const gemm_shape *s)
{
    if (narrow) {
        level->dot_bt(s->m, s->n, s->k, s->a, s->lda, s->b, s->ldb, s->c, s->ldc, s->accumulate);
        return 0;
    }
    return level->gemm(s->trans_a, s->trans_b, s->m, s->n, s->k, s->a, s->lda, s->b, s->ldb,
                       s->c, s->ldc, s->accumulate, blocking);
}

typedef struct {
    const gemm_level *level;
    const gemm_blocking *blocking;
    gemm_shape shape;
    int narrow;
    int rc;
} gemm_part;

static void gemm_part_run(void *arg)
{
    gemm_part *p = (gemm_part *)arg;
    p->rc = run_product(p->level, p->blocking, p->narrow, &p->shape);
}

/* The product split into `threads` parts: by rows of C when it has at least as many rows as
 * columns (always for the dot-product path), else by columns, in whole micro-tiles. Each part
 * is an independent GEMM on its own scratch, so the result is the same bits as one thread's:
 * every C entry sums the same k terms in the same order. */
static int gemm_split(const gemm_level *level, const gemm_blocking *blocking, int threads,
                      const gemm_shape *s)
{
    int narrow = is_narrow(s), by_rows = narrow || s->m >= s->n;
    ptrdiff_t extent = by_rows ? s->m : s->n, unit = by_rows ? level->mr : level->nr;
    ptrdiff_t units = (extent + unit - 1) / unit;
    if (threads > units)
        threads = (int)units;
    if (threads > MAX_GEMM_THREADS)
        threads = MAX_GEMM_THREADS;
    if (threads <= 1)
        return run_product(level, blocking, narrow, s);
    gemm_part parts[MAX_GEMM_THREADS];
    for (int t = 0; t < threads; t++) {
        ptrdiff_t first = units * t / threads * unit, last = units * (t + 1) / threads * unit;
        if (last > extent)
            last = extent;
        gemm_part *p = &parts[t];
        *p = (gemm_part){level, blocking, *s, narrow, 0};
        if (by_rows) {
            p->shape.m = last - first;
            p->shape.a = s->trans_a ? s->a + first : s->a + first * s->lda;
            p->shape.c = s->c + first * s->ldc;
        } else {
            p->shape.n = last - first;
            p->shape.b = s->trans_b ? s->b + first * s->ldb : s->b + first;
            p->shape.c = s->c + first;
        }
    }
    run_tasks(gemm_part_run, parts, sizeof(gemm_part), threads);
    for (int t = 0; t < threads; t++)
        if (parts[t].rc < 0)
            return -1;
    return 0;
}

/* Products first..last of a stack, matrix i of each operand i strides in. */
typedef struct {
    gemm_part part;  /* the first product of the stack */
    ptrdiff_t first, last, stride_a, stride_b, stride_c;
} gemm_batch;

static void gemm_batch_run(void *arg)
{
    gemm_batch *job = (gemm_batch *)arg;
    job->part.rc = 0;
    for (ptrdiff_t i = job->first; i < job->last && job->part.rc >= 0; i++) {
        gemm_shape s = job->part.shape;
        s.a += i * job->stride_a;
        s.b += i * job->stride_b;
        s.c += i * job->stride_c;
        job->part.rc = run_product(job->part.level, job->part.blocking, job->part.narrow, &s);
    }
}

int gemm_run(const gemm_level *level, const gemm_blocking *blocking, int threads,
             const gemm_shape *shape, ptrdiff_t count, ptrdiff_t stride_a, ptrdiff_t stride_b,
             ptrdiff_t stride_c)
{
    if (count == 1)
        return gemm_split(level, blocking, threads, shape);
    if (threads > count)
        threads = (int)count;
    if (threads > MAX_GEMM_THREADS)
        threads = MAX_GEMM_THREADS;
    if (threads < 1)
        threads = 1;
    gemm_batch jobs[MAX_GEMM_THREADS];
    for (int t = 0; t < threads; t++)
        jobs[t] = (gemm_batch){{level, blocking, *shape, is_narrow(shape), 0}, count * t / threads,
                               count * (t + 1) / threads, stride_a, stride_b, stride_c};
    run_tasks(gemm_batch_run, jobs, sizeof(gemm_batch), threads);
    for (int t = 0; t < threads; t++)
        if (jobs[t].part.rc < 0)
            return -1;
    return 0;
}
