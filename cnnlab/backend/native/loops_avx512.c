/* loops_avx512.c: the _loops kernels at the avx512 level, AVX-512 F/DQ/BW/VL (x86-64). */
#define CNNLAB_LEVEL_AVX512
#include "loops_level.h"
