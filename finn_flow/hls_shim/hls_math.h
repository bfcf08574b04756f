// brevitas-apq stand-in for Vitis HLS's <hls_math.h>, for C++ simulation (csim) with g++.
//
// The functions finn-hlslib, attention-hlslib and finn-plus's generated code call, mapped to
// the C++ standard library in the argument's precision (float stays float). Vitis's csim uses
// its own implementations of some of these (e.g. hls::rsqrt, hls::exp); results can differ
// from the real csim/RTL in the last bit of a float. Integer-only kernels are unaffected.
#ifndef X_HLS_MATH_SIM_H
#define X_HLS_MATH_SIM_H

#include <cmath>
#include <type_traits>

#include "hls_half.h"

namespace hls {

namespace shim_detail {
// float for float/half/integer arguments, double for double (as Vitis's overloads).
template <typename T>
using real_t = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
}  // namespace shim_detail

#define HLS_SHIM_UNARY(NAME, EXPR)                              \
	inline float NAME(float x) { return EXPR; }                  \
	inline double NAME(double x) { return EXPR; }                \
	inline half NAME(half h) {                                   \
		float x = float(h);                                      \
		return half(EXPR);                                       \
	}                                                            \
	template <typename T, typename = typename std::enable_if<!std::is_floating_point<T>::value && \
	                                                        !std::is_same<T, half>::value>::type> \
	inline float NAME(const T &v) {                              \
		float x = float(v);                                      \
		return EXPR;                                             \
	}

HLS_SHIM_UNARY(exp, std::exp(x))
HLS_SHIM_UNARY(exp2, std::exp2(x))
HLS_SHIM_UNARY(log, std::log(x))
HLS_SHIM_UNARY(log2, std::log2(x))
HLS_SHIM_UNARY(log10, std::log10(x))
HLS_SHIM_UNARY(sqrt, std::sqrt(x))
HLS_SHIM_UNARY(rsqrt, decltype(x)(1) / std::sqrt(x))
HLS_SHIM_UNARY(recip, decltype(x)(1) / x)
HLS_SHIM_UNARY(sin, std::sin(x))
HLS_SHIM_UNARY(cos, std::cos(x))
HLS_SHIM_UNARY(tan, std::tan(x))
HLS_SHIM_UNARY(tanh, std::tanh(x))
HLS_SHIM_UNARY(atan, std::atan(x))
HLS_SHIM_UNARY(erf, std::erf(x))
HLS_SHIM_UNARY(fabs, std::fabs(x))
HLS_SHIM_UNARY(floor, std::floor(x))
HLS_SHIM_UNARY(ceil, std::ceil(x))
HLS_SHIM_UNARY(round, std::round(x))
HLS_SHIM_UNARY(trunc, std::trunc(x))
HLS_SHIM_UNARY(rint, std::rint(x))
#undef HLS_SHIM_UNARY

inline float abs(float x) { return std::fabs(x); }
inline double abs(double x) { return std::fabs(x); }

inline long lrint(float x) { return std::lrint(x); }
inline long lrint(double x) { return std::lrint(x); }
inline long lround(float x) { return std::lround(x); }
inline long lround(double x) { return std::lround(x); }

inline float pow(float x, float y) { return std::pow(x, y); }
inline double pow(double x, double y) { return std::pow(x, y); }
inline float fmax(float x, float y) { return std::fmax(x, y); }
inline double fmax(double x, double y) { return std::fmax(x, y); }
inline float fmin(float x, float y) { return std::fmin(x, y); }
inline double fmin(double x, double y) { return std::fmin(x, y); }
inline float fmod(float x, float y) { return std::fmod(x, y); }
inline double fmod(double x, double y) { return std::fmod(x, y); }

inline bool isinf(float x) { return std::isinf(x); }
inline bool isinf(double x) { return std::isinf(x); }
inline bool isnan(float x) { return std::isnan(x); }
inline bool isnan(double x) { return std::isnan(x); }
inline bool isfinite(float x) { return std::isfinite(x); }
inline bool isfinite(double x) { return std::isfinite(x); }
inline bool signbit(float x) { return std::signbit(x); }
inline bool signbit(double x) { return std::signbit(x); }

}  // namespace hls

#endif  // X_HLS_MATH_SIM_H
