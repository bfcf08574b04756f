// brevitas-apq stand-in for Vitis HLS's <hls_vector.h>, for C++ simulation (csim) with g++.
//
// hls::vector<T, N>: a fixed-size array value type with element-wise arithmetic, as used by
// finn-hlslib (layernorm, concat, flatten) and finn-plus's generated code (npy2vectorstream,
// hls_vector stream interfaces). Element-wise operators apply the element type's own operator
// and convert back to T, as Vitis's hls::vector does.
#ifndef X_HLS_VECTOR_SIM_H
#define X_HLS_VECTOR_SIM_H

#include <cstddef>
#include <initializer_list>
#include <ostream>

namespace hls {

template <typename T, std::size_t N>
class vector {
	static_assert(N > 0, "hls::vector must have at least one element");
	T data_[N];

public:
	using value_type = T;
	using size_type = std::size_t;
	using iterator = T *;
	using const_iterator = const T *;

	vector() : data_() {}
	// Broadcast a scalar to all elements.
	vector(const T &value) {
		for (std::size_t i = 0; i < N; i++) data_[i] = value;
	}
	vector(std::initializer_list<T> init) : data_() {
		std::size_t i = 0;
		for (auto it = init.begin(); it != init.end() && i < N; ++it, ++i) data_[i] = *it;
	}
	vector(const vector &) = default;
	vector &operator=(const vector &) = default;

	static constexpr std::size_t size() { return N; }
	T &operator[](std::size_t i) { return data_[i]; }
	const T &operator[](std::size_t i) const { return data_[i]; }
	T *data() { return data_; }
	const T *data() const { return data_; }
	iterator begin() { return data_; }
	iterator end() { return data_ + N; }
	const_iterator begin() const { return data_; }
	const_iterator end() const { return data_ + N; }

#define HLS_SHIM_VECTOR_COMPOUND(OP)                                   \
	vector &operator OP##=(const vector & rhs) {                        \
		for (std::size_t i = 0; i < N; i++) data_[i] = T(data_[i] OP rhs.data_[i]); \
		return *this;                                                  \
	}                                                                  \
	vector &operator OP##=(const T & rhs) {                             \
		for (std::size_t i = 0; i < N; i++) data_[i] = T(data_[i] OP rhs); \
		return *this;                                                  \
	}                                                                  \
	friend vector operator OP(vector lhs, const vector & rhs) { return lhs OP## = rhs; } \
	friend vector operator OP(vector lhs, const T & rhs) { return lhs OP## = rhs; }      \
	friend vector operator OP(const T & lhs, const vector & rhs) {     \
		vector out;                                                    \
		for (std::size_t i = 0; i < N; i++) out.data_[i] = T(lhs OP rhs.data_[i]); \
		return out;                                                    \
	}
	HLS_SHIM_VECTOR_COMPOUND(+)
	HLS_SHIM_VECTOR_COMPOUND(-)
	HLS_SHIM_VECTOR_COMPOUND(*)
	HLS_SHIM_VECTOR_COMPOUND(/)
	HLS_SHIM_VECTOR_COMPOUND(%)
	HLS_SHIM_VECTOR_COMPOUND(&)
	HLS_SHIM_VECTOR_COMPOUND(|)
	HLS_SHIM_VECTOR_COMPOUND(^)
	HLS_SHIM_VECTOR_COMPOUND(<<)
	HLS_SHIM_VECTOR_COMPOUND(>>)
#undef HLS_SHIM_VECTOR_COMPOUND

	vector operator+() const { return *this; }
	vector operator-() const {
		vector out;
		for (std::size_t i = 0; i < N; i++) out.data_[i] = T(-data_[i]);
		return out;
	}
	vector operator~() const {
		vector out;
		for (std::size_t i = 0; i < N; i++) out.data_[i] = T(~data_[i]);
		return out;
	}
	vector &operator++() { return *this += T(1); }
	vector &operator--() { return *this -= T(1); }

	// Whole-vector comparison (all elements equal), lexicographic ordering.
	friend bool operator==(const vector &lhs, const vector &rhs) {
		for (std::size_t i = 0; i < N; i++)
			if (!(lhs.data_[i] == rhs.data_[i])) return false;
		return true;
	}
	friend bool operator!=(const vector &lhs, const vector &rhs) { return !(lhs == rhs); }
	friend bool operator<(const vector &lhs, const vector &rhs) {
		for (std::size_t i = 0; i < N; i++) {
			if (lhs.data_[i] < rhs.data_[i]) return true;
			if (rhs.data_[i] < lhs.data_[i]) return false;
		}
		return false;
	}
	friend bool operator>(const vector &lhs, const vector &rhs) { return rhs < lhs; }
	friend bool operator<=(const vector &lhs, const vector &rhs) { return !(rhs < lhs); }
	friend bool operator>=(const vector &lhs, const vector &rhs) { return !(lhs < rhs); }

	// Reductions (Vitis names).
	T reduce_add() const {
		T acc = data_[0];
		for (std::size_t i = 1; i < N; i++) acc = T(acc + data_[i]);
		return acc;
	}
	T reduce_mult() const {
		T acc = data_[0];
		for (std::size_t i = 1; i < N; i++) acc = T(acc * data_[i]);
		return acc;
	}
	T reduce_and() const {
		T acc = data_[0];
		for (std::size_t i = 1; i < N; i++) acc = T(acc & data_[i]);
		return acc;
	}
	T reduce_or() const {
		T acc = data_[0];
		for (std::size_t i = 1; i < N; i++) acc = T(acc | data_[i]);
		return acc;
	}
	T reduce_xor() const {
		T acc = data_[0];
		for (std::size_t i = 1; i < N; i++) acc = T(acc ^ data_[i]);
		return acc;
	}
};

}  // namespace hls

#endif  // X_HLS_VECTOR_SIM_H
