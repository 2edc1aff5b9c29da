/* loops_neon.c: the _loops kernels at the neon level, NEON (aarch64). */
#define CNNLAB_LEVEL_NEON
#include "loops_level.h"
