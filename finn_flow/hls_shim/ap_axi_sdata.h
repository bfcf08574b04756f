// brevitas-apq stand-in for Vitis HLS's <ap_axi_sdata.h>, for C++ simulation (csim) with g++.
//
// AXI4-Stream side-channel structs: hls::axis<T, U, I, D> (data of any type T), ap_axiu /
// ap_axis (ap_uint / ap_int data of width D) and qdma_axis (data, keep, last; the accessor
// methods finn-hlslib's streamtools.h calls). Widths of 0 give 1-bit fields, as the real
// header does for unused side channels.
#ifndef X_AP_AXI_SDATA_SIM_H
#define X_AP_AXI_SDATA_SIM_H

#include <ap_int.h>

namespace hls {
namespace shim_detail {
template <int W>
struct axi_width {
	static constexpr int value = W > 0 ? W : 1;
};
}  // namespace shim_detail

template <typename T, std::size_t WUser = 0, std::size_t WId = 0, std::size_t WDest = 0>
struct axis {
	static constexpr std::size_t NBytes = (sizeof(T) > 0 ? sizeof(T) : 1);
	T data;
	ap_uint<NBytes> keep;
	ap_uint<NBytes> strb;
	ap_uint<shim_detail::axi_width<int(WUser)>::value> user;
	ap_uint<1> last;
	ap_uint<shim_detail::axi_width<int(WId)>::value> id;
	ap_uint<shim_detail::axi_width<int(WDest)>::value> dest;
};
}  // namespace hls

template <int D, int U = 0, int TI = 0, int TD = 0>
struct ap_axis {
	ap_int<D> data;
	ap_uint<(D + 7) / 8> keep;
	ap_uint<(D + 7) / 8> strb;
	ap_uint<hls::shim_detail::axi_width<U>::value> user;
	ap_uint<1> last;
	ap_uint<hls::shim_detail::axi_width<TI>::value> id;
	ap_uint<hls::shim_detail::axi_width<TD>::value> dest;
};

template <int D, int U = 0, int TI = 0, int TD = 0>
struct ap_axiu {
	ap_uint<D> data;
	ap_uint<(D + 7) / 8> keep;
	ap_uint<(D + 7) / 8> strb;
	ap_uint<hls::shim_detail::axi_width<U>::value> user;
	ap_uint<1> last;
	ap_uint<hls::shim_detail::axi_width<TI>::value> id;
	ap_uint<hls::shim_detail::axi_width<TD>::value> dest;
};

template <int D, int U = 0, int TI = 0, int TD = 0>
struct qdma_axis {
	ap_uint<D> data;
	ap_uint<(D + 7) / 8> keep;
	ap_uint<1> last;

	ap_uint<D> get_data() const { return data; }
	void set_data(const ap_uint<D> &d) { data = d; }
	ap_uint<(D + 7) / 8> get_keep() const { return keep; }
	void set_keep(const ap_uint<(D + 7) / 8> &k) { keep = k; }
	ap_uint<1> get_last() const { return last; }
	void set_last(const ap_uint<1> &l) { last = l; }
};

#endif  // X_AP_AXI_SDATA_SIM_H
