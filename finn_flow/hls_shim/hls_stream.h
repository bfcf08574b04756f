// brevitas-apq stand-in for Vitis HLS's <hls_stream.h>, for C++ simulation (csim) with g++.
//
// hls::stream<T> is a FIFO of unbounded depth (as in Vitis csim). As Vitis csim does, reading
// an empty stream prints a warning and returns T(), and a stream destroyed with data left in
// it prints a warning: both mean the kernel consumed or produced a different number of words
// than the testbench expects. Single-threaded: the kernels of a node run sequentially, as in
// Vitis's sequential csim. Only the first few warnings are printed, then a count at exit.
#ifndef X_HLS_STREAM_SIM_H
#define X_HLS_STREAM_SIM_H

#include <cstddef>
#include <cstdio>
#include <deque>
#include <string>

namespace hls {

namespace shim_detail {
constexpr unsigned long kMaxWarnings = 8;
// Reads of empty streams and streams destroyed with leftover data (reported at exit).
struct Counters {
	unsigned long empty_reads = 0;
	unsigned long leftover_streams = 0;
	~Counters() {
		if (empty_reads > kMaxWarnings)
			std::fprintf(stderr, "WARNING: [hls_shim] %lu read(s) of empty hls::stream\n",
			             empty_reads);
	}
};
inline Counters counters;
}  // namespace shim_detail

template <typename T, int DEPTH = 0>
class stream {
	std::deque<T> fifo_;
	std::string name_;

public:
	stream() : name_("hls::stream") {}
	explicit stream(const char *name) : name_(name) {}
	~stream() {
		if (!fifo_.empty() && ++shim_detail::counters.leftover_streams <= shim_detail::kMaxWarnings)
			std::fprintf(stderr,
			             "WARNING: Hls::stream '%s' contains leftover data (%zu words), which "
			             "may result in RTL simulation hanging.\n",
			             name_.c_str(), fifo_.size());
	}
	stream(const stream &) = delete;
	stream &operator=(const stream &) = delete;

	bool empty() const { return fifo_.empty(); }
	bool full() const { return false; }
	std::size_t size() const { return fifo_.size(); }
	std::size_t capacity() const { return DEPTH > 0 ? std::size_t(DEPTH) : std::size_t(-1); }
	const std::string &name() const { return name_; }
	void set_name(const char *name) { name_ = name; }

	void read(T &value) { value = read(); }
	T read() {
		if (fifo_.empty()) {
			if (++shim_detail::counters.empty_reads <= shim_detail::kMaxWarnings)
				std::fprintf(stderr,
				             "WARNING: Hls::stream '%s' is read while empty, which may result "
				             "in RTL simulation hanging.\n",
				             name_.c_str());
			return T();
		}
		T value = fifo_.front();
		fifo_.pop_front();
		return value;
	}
	bool read_nb(T &value) {
		if (fifo_.empty()) return false;
		value = fifo_.front();
		fifo_.pop_front();
		return true;
	}
	void write(const T &value) { fifo_.push_back(value); }
	bool write_nb(const T &value) {
		fifo_.push_back(value);
		return true;
	}
	void operator>>(T &value) { read(value); }
	void operator<<(const T &value) { write(value); }
};

}  // namespace hls

#endif  // X_HLS_STREAM_SIM_H
