/* loops_avx2.c: the _loops kernels at the avx2 level, AVX2 + FMA (x86-64). */
#define CNNLAB_LEVEL_AVX2
#include "loops_level.h"
