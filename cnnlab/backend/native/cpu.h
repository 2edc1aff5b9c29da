/*
 * cpu.h: which levels this CPU (and its operating system) can run, and their names.
 *
 * x86-64: cpuid says what the CPU has and xgetbv what the OS saves on a context switch;
 * AVX2 needs the ymm state saved (XCR0 bits 1-2), AVX-512 also the opmask and zmm state
 * (bits 5-7). aarch64: NEON (Advanced SIMD) is part of the baseline.
 */
#ifndef CNNLAB_CPU_H
#define CNNLAB_CPU_H

#include "kernels.h"

#if CNNLAB_X86 && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

static const char *const level_names[LEVEL_COUNT] = {"portable", "avx2", "avx512", "neon"};

#if CNNLAB_X86 && (defined(__GNUC__) || defined(__clang__))
static inline unsigned long long cpu_xcr0(void)
{
    unsigned int low, high;
    __asm__ volatile("xgetbv" : "=a"(low), "=d"(high) : "c"(0));
    return ((unsigned long long)high << 32) | low;
}
#endif

static inline int cpu_runs_level(int level)
{
    if (level == LEVEL_PORTABLE)
        return 1;
#if CNNLAB_X86 && (defined(__GNUC__) || defined(__clang__))
    if (level == LEVEL_AVX2 || level == LEVEL_AVX512) {
        unsigned int eax, ebx, ecx, edx;
        if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
            return 0;
        int fma = (ecx >> 12) & 1, osxsave = (ecx >> 27) & 1, avx = (ecx >> 28) & 1;
        if (!(fma && osxsave && avx) || (cpu_xcr0() & 0x6) != 0x6)
            return 0;
        if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !((ebx >> 5) & 1))  /* AVX2 */
            return 0;
        if (level == LEVEL_AVX2)
            return 1;
#if defined(CNNLAB_EMULATE_AVX512)
        return 1;  /* simd.h: the avx512 level built from AVX2 through SIMDe (tests only) */
#endif
        /* AVX512F (16), DQ (17), BW (30), VL (31) */
        unsigned int avx512 = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);
        return (ebx & avx512) == avx512 && (cpu_xcr0() & 0xe6) == 0xe6;
    }
#endif
#if CNNLAB_ARM64
    if (level == LEVEL_NEON)
        return 1;
#endif
    return 0;
}

/* Level ids compiled into this build, in order (portable first, best last). */
static inline int compiled_levels(int *ids)
{
    int count = 0;
    ids[count++] = LEVEL_PORTABLE;
#if CNNLAB_X86
    ids[count++] = LEVEL_AVX2;
    ids[count++] = LEVEL_AVX512;
#endif
#if CNNLAB_ARM64
    ids[count++] = LEVEL_NEON;
#endif
    return count;
}

/* The best level compiled in that this CPU runs. */
static inline int best_level(void)
{
    int ids[LEVEL_COUNT], count = compiled_levels(ids), best = LEVEL_PORTABLE;
    for (int i = 0; i < count; i++)
        if (cpu_runs_level(ids[i]))
            best = ids[i];
    return best;
}

static inline const loops_level *loops_table(int level)
{
    switch (level) {
#if CNNLAB_X86
    case LEVEL_AVX2: return &loops_level_avx2;
    case LEVEL_AVX512: return &loops_level_avx512;
#endif
#if CNNLAB_ARM64
    case LEVEL_NEON: return &loops_level_neon;
#endif
    case LEVEL_PORTABLE: return &loops_level_portable;
    default: return NULL;
    }
}

static inline const gemm_level *gemm_table(int level)
{
    switch (level) {
#if CNNLAB_X86
    case LEVEL_AVX2: return &gemm_level_avx2;
    case LEVEL_AVX512: return &gemm_level_avx512;
#endif
#if CNNLAB_ARM64
    case LEVEL_NEON: return &gemm_level_neon;
#endif
    case LEVEL_PORTABLE: return &gemm_level_portable;
    default: return NULL;
    }
}

#endif
