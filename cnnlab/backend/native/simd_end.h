/* simd_end.h: closes the target region that simd.h opened for a level's unit. */
#if SIMD_COMPILED && (defined(CNNLAB_LEVEL_AVX512) || defined(CNNLAB_LEVEL_AVX2))
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
