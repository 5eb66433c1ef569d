#!/usr/bin/env python3
"""Offline checks of the kernels' index math and decode (no GPU, plain Python), mirroring their code:

  1. the 16-entry codebook lookup (three PRMT, sign mode included) on every 16-bit half-word;
  2. iq4_decode_f16 + the permuted activation order (xq_pos) + mma.m16n8k16's PTX fragment layouts for one
     16-row x 32-column sub-block, against a direct dot product of the same fp16 values;
  3. the reductions' float4 tile layout: decode back to (row, column), each output once, the KS ranges;
  4. the fixed staging: every weight chunk and activation piece copied once, one parity a thread, the
     activation copies' source offsets;
  5. convert_x_f16's block-major layout against what a CTA stages;
  6. iq4xs_scales_f16 / iq4xs_ls_select against iq4xs_sub_scale and the float path they replace;
  7. the matvec's (mmv_iq4xs.cuh) fixed weight staging against the per-stage addressing it replaced.

Prints one line a check and exits 1 if any fails (tests/cuda_kernel_math.rs runs it in CI)."""
import random
import struct
import sys

KV = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]


def pack4(a, b, c, d):
    return (a & 255) | ((b & 255) << 8) | ((c & 255) << 16) | ((d & 255) << 24)


UA0, UA1 = pack4(*[KV[i] + 128 for i in range(0, 4)]), pack4(*[KV[i] + 128 for i in range(4, 8)])
UB0, UB1 = pack4(*[KV[i] + 128 for i in range(8, 12)]), pack4(*[KV[i] + 128 for i in range(12, 16)])


def prmt(a, b, c):
    """PTX prmt.b32, default mode: selector nibble i picks byte (nibble & 7) of {b, a}; bit 3 replicates its sign."""
    bs = [(a >> (8 * i)) & 255 for i in range(4)] + [(b >> (8 * i)) & 255 for i in range(4)]
    out = 0
    for i in range(4):
        sel = (c >> (4 * i)) & 15
        v = bs[sel & 7]
        if sel & 8:
            v = 255 if v & 128 else 0
        out |= v << (8 * i)
    return out


def f16(x):
    """x rounded to fp16 (round half to even), as a float."""
    return struct.unpack("<e", struct.pack("<e", x))[0]


def h2f(bits):
    return struct.unpack("<e", struct.pack("<H", bits & 0xFFFF))[0]


def xq_pos(i):
    return 8 * ((i & 15) >> 2) + 2 * (i & 3) + (i >> 4)


results = []


def report(name, ok):
    results.append(ok)
    print(f"{name}: {'ok' if ok else 'MISMATCH'}")


# 1. The lookup, as iq4_decode_f16 does it: (u of half-word 0, u of half-word 1).
def lookup(w):
    idx7 = w & 0x77777777
    pick = ((w >> 1) & 0x44444444) | 0x32103210
    us = []
    for p in range(2):
        raw, sel, pk = (w >> 16, idx7 >> 16, pick >> 16) if p else (w, idx7, pick)
        a = prmt(UA0, UA1, raw)
        b = prmt(UB0, UB1, sel)
        us.append(prmt(a, b, pk))
    return us


report("16-entry lookup, all 65536 half-words",
       all(lookup(v | (v << 16)) == [sum((KV[(v >> (4 * i)) & 15] + 128) << (8 * i) for i in range(4))] * 2
           for v in range(65536)))


# 2. Decode and fragments.
def decode(w, s):
    """The 4 half2 of one qs word: (byte i low nibble, byte i high nibble) times s, as the kernel rounds them."""
    h = []
    for u in lookup(w):
        for hh in (prmt(u, 0x64646464, 0x4140), prmt(u, 0x64646464, 0x4342)):
            h.append((f16((h2f(hh) - 1152) * s), f16((h2f(hh >> 16) - 1152) * s)))
    return h


rng = random.Random(1)
frag_ok = True
for trial in range(50):
    qs = [[rng.randrange(256) for _ in range(16)] for _ in range(16)]  # 16 rows x 16 bytes (32 weights)
    s = [f16(rng.gauss(0, 0.01)) for _ in range(16)]
    x = [[f16(rng.gauss(0, 1)) for _ in range(32)] for _ in range(8)]  # 8 columns
    W = [[0.0] * 32 for _ in range(16)]
    for r in range(16):
        for j in range(16):
            W[r][j] = f16(KV[qs[r][j] & 15] * s[r])
            W[r][j + 16] = f16(KV[qs[r][j] >> 4] * s[r])
    ref = [[sum(W[r][k] * x[n][k] for k in range(32)) for n in range(8)] for r in range(16)]
    xp = [[0.0] * 32 for _ in range(8)]  # activations in xq_pos order
    for n in range(8):
        for k in range(32):
            xp[n][xq_pos(k)] = x[n][k]
    C = [[0.0] * 8 for _ in range(16)]
    for step in range(2):  # the two k-steps of a 32-column sub-block
        A = [[0.0] * 16 for _ in range(16)]
        B = [[0.0] * 8 for _ in range(16)]
        for lane in range(32):
            g, tq = lane >> 2, lane & 3
            ga = decode(int.from_bytes(bytes(qs[g][4 * tq:4 * tq + 4]), "little"), s[g])
            gb = decode(int.from_bytes(bytes(qs[g + 8][4 * tq:4 * tq + 4]), "little"), s[g + 8])
            a0, a1, a2, a3 = (ga[0], gb[0], ga[1], gb[1]) if step == 0 else (ga[2], gb[2], ga[3], gb[3])
            A[g][2 * tq], A[g][2 * tq + 1] = a0
            A[g + 8][2 * tq], A[g + 8][2 * tq + 1] = a1
            A[g][2 * tq + 8], A[g][2 * tq + 9] = a2
            A[g + 8][2 * tq + 8], A[g + 8][2 * tq + 9] = a3
            hv = xp[g][8 * tq:8 * tq + 8]  # the lane's uint4 of column g: b.x, b.y for step 0, b.z, b.w for 1
            b0, b1 = (hv[0:2], hv[2:4]) if step == 0 else (hv[4:6], hv[6:8])
            B[2 * tq][g], B[2 * tq + 1][g] = b0
            B[2 * tq + 8][g], B[2 * tq + 9][g] = b1
        for r in range(16):
            for n in range(8):
                C[r][n] += sum(A[r][k] * B[k][n] for k in range(16))
    scale = max(abs(v) for row in ref for v in row)
    err = max(abs(C[r][n] - ref[r][n]) for r in range(16) for n in range(8)) / scale
    if err > 1e-9:
        frag_ok = False
        print(f"  trial {trial}: relative error {err:.3e}")
report("decode + mma fragments, 50 random sub-blocks", frag_ok)


# 3. The reductions' tile: float4 e = ((wmn * MT + m) * NF + f) * 32 + lane (wmn = wm + WM * wn) holds a lane's 4
# accumulators of fragment (m, f); store4 puts accumulator i at (+8 if i >= 2, +1 if i odd) from the (row, column)
# of accumulator 0. CTA z of a cluster of KS adds the float4s [z * E4 / KS, (z + 1) * E4 / KS).
def store_rc(MT, WM, NF, wm, wn, m, f, i, lane):
    g, tq = lane >> 2, lane & 3
    return 16 * (MT * wm + m) + g + (8 if i >= 2 else 0), 8 * NF * wn + 8 * f + 2 * tq + (i & 1)


def decode_rc(MT, WM, NF, e, i):
    ln, q = e & 31, e >> 5
    f, m, wmn = q % NF, (q // NF) % MT, q // (NF * MT)
    return (16 * (MT * (wmn % WM) + m) + (ln >> 2) + (8 if i >= 2 else 0),
            8 * NF * (wmn // WM) + 8 * f + 2 * (ln & 3) + (i & 1))


red_ok = True
for (NF, MT, WM, WN) in [(2, 2, 4, 1), (2, 4, 2, 1), (2, 4, 4, 1), (2, 2, 2, 1), (4, 2, 4, 1), (4, 4, 2, 1), (4, 2, 2, 1),
                         (8, 2, 4, 1), (8, 2, 2, 1), (4, 2, 4, 2), (2, 1, 1, 1), (8, 1, 4, 1)]:
    E4 = WM * WN * MT * NF * 32
    seen = set()
    for wm in range(WM):
        for wn in range(WN):
            for m in range(MT):
                for f in range(NF):
                    for lane in range(32):
                        e = (((wm + WM * wn) * MT + m) * NF + f) * 32 + lane
                        for i in range(4):
                            rc = store_rc(MT, WM, NF, wm, wn, m, f, i, lane)
                            red_ok &= decode_rc(MT, WM, NF, e, i) == rc
                            seen.add(rc)
    red_ok &= len(seen) == 4 * E4 and seen == {(r, c) for r in range(16 * MT * WM) for c in range(8 * NF * WN)}
    for KS in range(1, 9):
        cover = [0] * E4
        for z in range(KS):
            for e in range(z * E4 // KS, (z + 1) * E4 // KS):
                cover[e] += 1
        red_ok &= all(c == 1 for c in cover)
report("reduction tile mapping", red_ok)

# 4. Fixed staging (issue_w / issue_x): thread t copies chunk t & 7 of rows t >> 3 + i * NT / 8 and the tail (chunk
# 8) of rows t + i * NT; activation piece t & 31 of columns t >> 5 + i * NT / 32, from 16 * t + 16 * NT * i bytes
# into the block's contiguous run of the tile's columns. Every (row, chunk) and (column, piece) once; a thread's
# rows share one parity of R * nb.
stage_ok = True
for (NF, MT, WM, WN, WK) in [(2, 1, 1, 1, 8), (2, 2, 2, 1, 4), (2, 2, 4, 1, 1), (2, 2, 4, 1, 2), (2, 4, 2, 1, 2),
                             (2, 4, 4, 1, 1), (4, 1, 2, 1, 8), (4, 2, 2, 1, 2), (4, 2, 4, 1, 1), (4, 2, 4, 1, 2),
                             (4, 2, 4, 2, 1), (4, 4, 2, 1, 2), (8, 1, 2, 1, 8), (8, 1, 4, 1, 2), (8, 2, 2, 1, 2),
                             (8, 2, 4, 1, 1), (8, 2, 4, 1, 2)]:
    BM, BN, NT = 16 * MT * WM, 8 * NF * WN, 32 * WM * WN * WK
    WROWS, TCH = NT // 8, -(-BM // NT)
    WCH = -(-BM // WROWS)
    XROWS, XCH = NT // 32, BN * 32 // NT
    stage_ok &= (BN * 32) % NT == 0 and 64 % BN == 0  # the kernel's static_assert
    w, x = [], []
    for t in range(NT):
        rows = []
        for i in range(WCH):
            r = (t >> 3) + i * WROWS
            if r < BM:
                w.append((r, t & 7))
                rows.append(r)
        for i in range(TCH):
            r = t + i * NT
            if r < BM:
                w.append((r, 8))
                rows.append(r)
        for i in range(XCH):
            n = (t >> 5) + i * XROWS
            if n < BN:
                x.append((n, t & 31))
            stage_ok &= 16 * t + 16 * NT * i == 512 * n + 16 * (t & 31)
        for row0 in (0, 128, 37 * 128):
            for nb in (16, 43):
                pars = {((row0 + r) * nb) & 1 for r in rows if (r - (t >> 3)) % WROWS == 0}
                tpars = {((row0 + r) * nb) & 1 for r in rows if r % NT == t}
                stage_ok &= len(pars) <= 1 and len(tpars) <= 1
    stage_ok &= sorted(w) == [(r, j) for r in range(BM) for j in range(9)]
    stage_ok &= sorted(x) == [(n, j) for n in range(BN) for j in range(32)]
report("fixed staging mapping", stage_ok)


# 5. convert_x_f16's layout (mmm_xh_index): block u's columns [col0, col0 + BN) are one run from
# (u * cols_padded + col0) * 256 halves; column n's half j is x[col0 + n][256 u + k] with xq_pos(k % 32) == j % 32
# in k's 32-group; pad columns zero.
def xh_index(ncols, k, n):
    cp = -(-ncols // 64) * 64
    return ((k // 256) * cp + n) * 256 + ((k % 256) & ~31) + xq_pos(k & 31)


layout_ok = True
inv = {xq_pos(i): i for i in range(32)}
for ncols, K in ((5, 512), (64, 256), (65, 768), (130, 1024)):
    cp = -(-ncols // 64) * 64
    xs = [[rng.gauss(0, 1) for _ in range(K)] for _ in range(ncols)]
    xh = [None] * (cp * K)
    for n in range(cp):
        for k in range(K):
            xh[xh_index(ncols, k, n)] = xs[n][k] if n < ncols else 0.0
    layout_ok &= all(v is not None for v in xh)
    for BN in (16, 32, 64):
        for col0 in range(0, cp, BN):
            for u in range(K // 256):
                base = (u * cp + col0) * 256
                for n in range(BN):
                    for j in range(256):
                        want = xs[col0 + n][256 * u + (j & ~31) + inv[j & 31]] if col0 + n < ncols else 0.0
                        layout_ok &= xh[base + 256 * n + j] == want
report("activation layout", layout_ok)


# 6. The sub-block scales of a warp's SBW sub-blocks, two to a half2.
def ls_select(SBW, wk):
    if SBW == 8:
        return 0x5140
    if SBW == 4:
        return 0x7362 if wk else 0x5140
    if SBW == 2:
        return ((4 + wk) << 4) | wk
    return 4 + (wk >> 1) if wk & 1 else wk >> 1


def scales_f16(SBW, hx, hy, sel):
    x = hx >> 16
    x = (x | (x << 8)) & 0x00FF00FF
    x = (x | (x << 4)) & 0x0F0F0F0F
    x = (x | (x << 2)) & 0x33333333
    ev = (hy & 0x0F0F0F0F) | ((x << 4) & 0xF0F0F0F0)
    od = ((hy >> 4) & 0x0F0F0F0F) | (x & 0xF0F0F0F0)
    d = f16(h2f(hx) * 256.0)  # HMUL2 by 256: exact (checked below)
    ls = [prmt(ev, od, sel), prmt(ev, od, 0x7362)]
    out = []
    for q in range((SBW + 1) // 2):
        h = prmt(ls[q >> 1], 0x64646464, 0x4342 if q & 1 else 0x4140)
        for half in (h & 0xFFFF, h >> 16):
            out.append(f16(f16(h2f(half) - 1056.0) * d))  # HSUB2 (exact), HMUL2: the exact product rounded once
    return out


scale_ok = True
ds = [struct.unpack("<H", struct.pack("<e", v))[0] for v in (1e-5, 3.1e-4, -2.2e-3, 6.0e-8, -1.0e-7, 0.01, 0.5)]
for trial in range(4000):  # d includes fp16 subnormals
    hx = (rng.randrange(65536) << 16) | ds[trial % len(ds)]
    hy = rng.randrange(2 ** 32)
    d = h2f(hx)
    scale_ok &= f16(d * 256.0) == d * 256.0
    for SBW in (1, 2, 4, 8):
        for wk in range(8 // SBW):
            got = scales_f16(SBW, hx, hy, ls_select(SBW, wk))
            for i in range(SBW):
                sb = SBW * wk + i
                ls = ((hy >> (4 * sb)) & 15) | (((hx >> 16 >> (2 * sb)) & 3) << 4)
                scale_ok &= got[i] == f16(256.0 * d * (ls - 32))  # the float path: exact product, rounded once
report("sub-block scales", scale_ok)



# 7. The matvec's weight staging (mmv_iq4xs.cuh, session 24): each lane's rows fixed at the start (offsets from the
# tile, parities, which is the matrix's last row), against the session-23 form that computed every copy's address
# and remaining bytes per stage (measured correct and sanitizer-clean on an H100): the same (destination, source,
# size) copies for every lane, unit and shape, row counts and block counts odd and even.
def mmv_rs(UB):
    return 176 if UB == 1 else 304


def mmv_copies_old(nrows, nb, T, UB, row0, lane, u):
    rowbytes, total, out = nb * 136, nrows * nb * 136, []
    cu = min(UB, nb - UB * u)
    for i in range(4 * T):
        r = 4 * i + (lane >> 3)
        R = row0 + r
        if R < nrows:
            off = (((R * nb) & 1) ^ (UB * u)) & 1
            off *= 8
            A = R * rowbytes + u * (UB * 136) - off
            span = off + 136 * cu
            for m in range(2 if UB == 1 else 3):
                j = (lane & 7) + 8 * m
                if 16 * j < span:
                    out.append((r * mmv_rs(UB) + 16 * j, A + 16 * j, 16 if total - (A + 16 * j) >= 16 else 8))
    return out


def mmv_copies_new(nrows, nb, T, UB, row0, lane, u):
    rowbytes, nu, out = nb * 136, -(-nb // UB), []
    woff, wpar, wlast = [], 0, -1
    for i in range(4 * T):
        r = 4 * i + (lane >> 3)
        R = row0 + r
        woff.append(r * rowbytes + 16 * (lane & 7))
        wpar |= ((R * nb) & 1) << i
        if R == nrows - 1:
            wlast = i
    wtile = row0 * rowbytes
    cu = min(UB, nb - UB * u)
    for i in range(4 * T):
        r = 4 * i + (lane >> 3)
        if row0 + r < nrows:
            off = ((((wpar >> i) & 1) ^ (UB * u)) & 1) * 8
            span = off + 136 * cu
            src = wtile + woff[i] + (u * (UB * 136) - off)
            for m in range(2 if UB == 1 else 3):
                j = (lane & 7) + 8 * m
                if 16 * j < span:
                    size = 8 if (i == wlast and u == nu - 1 and 16 * j + 16 > span) else 16
                    out.append((r * mmv_rs(UB) + 16 * (lane & 7) + 128 * m, src + 128 * m, size))
    return out


mmv_ok = True
for nrows, nb in ((13, 1), (16, 1), (37, 3), (37, 2), (129, 3), (4099, 16), (33, 43), (17, 43)):
    for T in (1, 2):
        for UB in (1, 2):
            tiles = list(range(0, nrows, 16 * T))
            for row0 in tiles[:2] + tiles[2:][-2:]:  # the first and the last tiles (the matrix's end)
                for lane in range(32):
                    for u in range(-(-nb // UB)):
                        mmv_ok &= mmv_copies_new(nrows, nb, T, UB, row0, lane, u) == mmv_copies_old(nrows, nb, T, UB, row0, lane, u)
report("matvec staging, new == session 23's", mmv_ok)

sys.exit(0 if all(results) else 1)
