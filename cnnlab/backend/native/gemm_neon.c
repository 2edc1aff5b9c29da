/* gemm_neon.c: the GEMM at the neon level, NEON (aarch64). */
#define CNNLAB_LEVEL_NEON
#include "gemm_level.h"
