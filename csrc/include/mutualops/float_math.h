#pragma once

// The math library by overload on float and double, for host and device: templated math calls f_of(x) and gets
// the float function for float (sqrtf, not sqrt on a promoted double) on both.
#include <math.h>

#include "mutualops/macros.h"

namespace mutualops {

MUTUALOPS_HD float sqrt_of(float x) { return sqrtf(x); }
MUTUALOPS_HD double sqrt_of(double x) { return sqrt(x); }
MUTUALOPS_HD float pow_of(float x, float y) { return powf(x, y); }
MUTUALOPS_HD double pow_of(double x, double y) { return pow(x, y); }
MUTUALOPS_HD float exp_of(float x) { return expf(x); }
MUTUALOPS_HD double exp_of(double x) { return exp(x); }
MUTUALOPS_HD float log_of(float x) { return logf(x); }
MUTUALOPS_HD double log_of(double x) { return log(x); }
MUTUALOPS_HD float atan_of(float x) { return atanf(x); }
MUTUALOPS_HD double atan_of(double x) { return atan(x); }
MUTUALOPS_HD float cos_of(float x) { return cosf(x); }
MUTUALOPS_HD double cos_of(double x) { return cos(x); }
MUTUALOPS_HD float sin_of(float x) { return sinf(x); }
MUTUALOPS_HD double sin_of(double x) { return sin(x); }
MUTUALOPS_HD float abs_of(float x) { return fabsf(x); }
MUTUALOPS_HD double abs_of(double x) { return fabs(x); }

}  // namespace mutualops
