// brevitas-apq (finn_flow/verilator.py): drive one FINN RTL node with Verilator.
// Top module ports: ap_clk, ap_rst_n, in0_V_{TDATA,TVALID,TREADY}, out0_V_{TDATA,TVALID,TREADY};
// other inputs stay 0. Input words: IN.hex (one hexadecimal word per line); output words
// are written to OUT.hex in the same format.
// usage: sim IN.hex OUT.hex N_OUT [STALL SEED IDLE_LIMIT STRICT]
// STRICT=1 (default): output words beyond N_OUT within 64 cycles are an error (exit 4).
#include "Vtop.h"
#include "verilated.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

typedef std::vector<uint32_t> Word;  // little-endian 32-bit chunks

template <typename T> static void put(T& port, const Word& w) {
    uint64_t v = w.empty() ? 0 : w[0];
    if (sizeof(T) > 4 && w.size() > 1) v |= static_cast<uint64_t>(w[1]) << 32;
    port = static_cast<T>(v);
}
template <std::size_t N> static void put(VlWide<N>& port, const Word& w) {
    for (std::size_t i = 0; i < N; i++) port[i] = i < w.size() ? w[i] : 0;
}
template <typename T> static Word get(const T& port) {
    const uint64_t v = static_cast<uint64_t>(port);
    Word w{static_cast<uint32_t>(v)};
    if (sizeof(T) > 4) w.push_back(static_cast<uint32_t>(v >> 32));
    return w;
}
template <std::size_t N> static Word get(const VlWide<N>& port) {
    Word w(N);
    for (std::size_t i = 0; i < N; i++) w[i] = port[i];
    return w;
}

static Word parse_hex(const std::string& s) {
    Word w;
    for (std::size_t end = s.size(); end > 0;) {
        const std::size_t begin = end >= 8 ? end - 8 : 0;
        const std::string chunk = s.substr(begin, end - begin);
        w.push_back(static_cast<uint32_t>(std::strtoul(chunk.c_str(), nullptr, 16)));
        end = begin;
    }
    if (w.empty()) w.push_back(0);
    return w;
}

static void print_hex(FILE* f, const Word& w) {
    std::size_t top = w.size();
    while (top > 1 && w[top - 1] == 0) top--;
    std::fprintf(f, "%x", w[top - 1]);
    for (std::size_t i = top - 1; i-- > 0;) std::fprintf(f, "%08x", w[i]);
    std::fputc('\n', f);
}

// xorshift64*: reproducible stall patterns
static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static double uniform() {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return static_cast<double>((rng_state * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s IN.hex OUT.hex N_OUT [STALL SEED IDLE_LIMIT STRICT]\n",
                     argv[0]);
        return 2;
    }
    const long n_out = std::atol(argv[3]);
    const double stall = argc > 4 ? std::atof(argv[4]) : 0.0;
    if (argc > 5) rng_state ^= (std::strtoull(argv[5], nullptr, 10) + 1) * 0xD1B54A32D192ED03ULL;
    const long idle_limit = argc > 6 ? std::atol(argv[6]) : 100000;
    const bool strict = argc > 7 ? std::atoi(argv[7]) != 0 : true;

    std::vector<Word> in;
    {
        FILE* f = std::fopen(argv[1], "r");
        if (!f) { std::perror(argv[1]); return 2; }
        std::string line;
        int c;
        while ((c = std::fgetc(f)) != EOF) {
            if (c == '\n') { if (!line.empty()) in.push_back(parse_hex(line)); line.clear(); }
            else if (c != '\r' && c != ' ') line.push_back(static_cast<char>(c));
        }
        if (!line.empty()) in.push_back(parse_hex(line));
        std::fclose(f);
    }
    FILE* out = std::fopen(argv[2], "w");
    if (!out) { std::perror(argv[2]); return 2; }

    auto ctx = std::make_unique<VerilatedContext>();
    ctx->commandArgs(1, argv);
    auto top = std::make_unique<Vtop>(ctx.get());

    top->ap_clk = 0;
    top->ap_rst_n = 0;
    top->in0_V_TVALID = 0;
    top->out0_V_TREADY = 0;
    top->eval();
    for (int i = 0; i < 16; i++) {
        top->ap_clk = 1; top->eval();
        top->ap_clk = 0; top->eval();
    }
    top->ap_rst_n = 1;
    top->eval();

    std::size_t next = 0;
    long got = 0, extra = 0, idle = 0, cycles = 0, after = 0;
    const long drain = 64;  // cycles after the last expected word, to catch surplus output
    bool timeout = false;
    while (!ctx->gotFinish()) {
        const bool have = next < in.size();
        top->in0_V_TVALID = have && !(stall > 0 && uniform() < stall);
        if (have) put(top->in0_V_TDATA, in[next]);
        top->out0_V_TREADY = !(stall > 0 && uniform() < stall);
        top->eval();
        const bool in_fire = top->in0_V_TVALID && top->in0_V_TREADY;
        const bool out_fire = top->out0_V_TVALID && top->out0_V_TREADY;
        if (out_fire) {
            if (got < n_out) print_hex(out, get(top->out0_V_TDATA));
            else extra++;
            got++;
        }
        top->ap_clk = 1; top->eval();
        top->ap_clk = 0; top->eval();
        cycles++;
        if (in_fire) next++;
        idle = (in_fire || out_fire) ? 0 : idle + 1;
        if (got >= n_out && next >= in.size() && ++after > drain) break;
        if (idle > idle_limit) { timeout = true; break; }
    }
    const bool finished = ctx->gotFinish();
    top->final();
    std::fclose(out);
    std::fprintf(stderr, "apq-harness: cycles=%ld inputs=%zu/%zu outputs=%ld/%ld extra=%ld%s%s\n",
                 cycles, next, in.size(), got < n_out ? got : n_out, n_out, extra,
                 timeout ? " timeout" : "", finished ? " $finish" : "");
    if (got < n_out || next < in.size()) return 3;
    if (strict && extra > 0) return 4;
    return 0;
}
