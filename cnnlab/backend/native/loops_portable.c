/* loops_portable.c: the _loops kernels at the portable level, plain C at the compiler's baseline (any CPU). */
#define CNNLAB_LEVEL_PORTABLE
#include "loops_level.h"
