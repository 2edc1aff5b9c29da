/* gemm_avx512.c: the GEMM at the avx512 level, AVX-512 F/DQ/BW/VL (x86-64). */
#define CNNLAB_LEVEL_AVX512
#include "gemm_level.h"
