// brevitas-apq stand-in for Vitis HLS's <hls_half.h>, for C++ simulation (csim) with g++.
//
// Vitis HLS's `half` (IEEE binary16) as g++'s _Float16 (g++ >= 12 on x86-64). The open-source
// ap_int/ap_fixed headers leave `half` undefined (_AP_ENABLE_HALF_ 0); the shim's copy of
// ap_common.h includes this file so that every translation unit that includes ap_int.h (as
// finn-plus's cnpy.h does) sees the type. Only the type is provided: ap_int/ap_fixed have no
// half constructors here, convert through float.
#ifndef X_HLS_HALF_SIM_H
#define X_HLS_HALF_SIM_H

#if defined(__FLT16_MANT_DIG__)
typedef _Float16 half;
#else
#error "hls_shim: this compiler has no _Float16 type (need g++ >= 12 on x86-64 or aarch64)"
#endif

#endif  // X_HLS_HALF_SIM_H
