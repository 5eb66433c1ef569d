#!/usr/bin/env python3
"""Offline check of mmm_iq4xs.cuh's decode and fragment mapping (no GPU): emulates PRMT (incl. sign mode),
iq4_decode_f16, the permuted activation layout (xq_pos) and mma.m16n8k16's PTX fragment layouts for one 16-row x
32-column sub-block, against a direct dot product of the same fp16 values. Prints ok or the mismatches. Needs numpy."""
import struct

import numpy as np
kv=[-127,-104,-83,-65,-49,-35,-22,-10,1,13,25,38,53,69,89,113]
def pack4(a,b,c,d): return (a&255)|((b&255)<<8)|((c&255)<<16)|((d&255)<<24)
UA0=pack4(*[kv[i]+128 for i in range(0,4)]); UA1=pack4(*[kv[i]+128 for i in range(4,8)])
UB0=pack4(*[kv[i]+128 for i in range(8,12)]); UB1=pack4(*[kv[i]+128 for i in range(12,16)])
def prmt(a,b,c):
    bs=[(a>>(8*i))&255 for i in range(4)]+[(b>>(8*i))&255 for i in range(4)]
    out=0
    for i in range(4):
        sel=(c>>(4*i))&15; v=bs[sel&7]
        if sel&8: v=255 if v&128 else 0
        out|=v<<(8*i)
    return out
def f16(x): return float(np.float16(x))
def lookup(w):  # the kernel's 16-entry lookup of the 4 nibbles of each 16-bit half of w: (u of half 0, u of half 1)
    idx7=w&0x77777777; pick=((w>>1)&0x44444444)|0x32103210
    us=[]
    for p in range(2):
        raw=(w>>16) if p else w; sel=(idx7>>16) if p else idx7; pk=(pick>>16) if p else pick
        a=prmt(UA0,UA1,raw); b=prmt(UB0,UB1,sel); us.append(prmt(a,b,pk))
    return us
def decode(w,s):
    h=[]
    for u in lookup(w):
        h01=prmt(u,0x64646464,0x4140); h23=prmt(u,0x64646464,0x4342)
        for hh in (h01,h23):
            lo=np.frombuffer(struct.pack('<H',hh&0xffff),dtype=np.float16)[0]; hi=np.frombuffer(struct.pack('<H',hh>>16),dtype=np.float16)[0]
            h.append((f16((float(lo)-1152)*s), f16((float(hi)-1152)*s)))
    return h  # 4 pairs
# every 16-bit half: byte i of u is kv[nibble i] + 128
lookup_ok=all(lookup(v|(v<<16))==[sum((kv[(v>>(4*i))&15]+128)<<(8*i) for i in range(4))]*2 for v in range(65536))
print('16-entry lookup, all 65536 halves: '+('ok' if lookup_ok else 'MISMATCH'))
def xq_pos(i): return 8*((i&15)>>2)+2*(i&3)+(i>>4)
rng=np.random.default_rng(1)
ok=True
for trial in range(50):
    # one sub-block: rows 16 x 32 k, 8 columns
    qs=rng.integers(0,256,size=(16,16),dtype=np.uint8)  # 16 bytes per row
    s=[f16(rng.normal()*0.01) for _ in range(16)]
    x=rng.normal(size=(8,32)).astype(np.float16).astype(np.float64)
    # reference: W[r][k] = kv[nib]*s (fp16 rounded)
    W=np.zeros((16,32))
    for r in range(16):
        for j in range(16):
            W[r][j]=f16(kv[qs[r][j]&15]*s[r]); W[r][j+16]=f16(kv[qs[r][j]>>4]*s[r])
    ref=W@x.T  # 16 x 8
    # permuted activations per column
    xp=np.zeros((8,32))
    for n in range(8):
        for k in range(32): xp[n][xq_pos(k)]=x[n][k]
    C=np.zeros((16,8))
    # emulate mma: for each k-step (0,1): A logical 16x16, B logical 16x8 from lanes
    for step in range(2):
        A=np.zeros((16,16)); B=np.zeros((16,8))
        for lane in range(32):
            g,tq=lane>>2,lane&3
            dec={}
            for rr in (g,g+8):
                w=int.from_bytes(bytes(qs[rr][4*tq:4*tq+4]),'little')
                dec[rr]=decode(w,s[rr])
            ga,gb=dec[g],dec[g+8]
            a0,a1,a2,a3=(ga[0],gb[0],ga[1],gb[1]) if step==0 else (ga[2],gb[2],ga[3],gb[3])
            A[g][2*tq],A[g][2*tq+1]=a0; A[g+8][2*tq],A[g+8][2*tq+1]=a1
            A[g][2*tq+8],A[g][2*tq+9]=a2; A[g+8][2*tq+8],A[g+8][2*tq+9]=a3
            # B: uint4 at halves 8tq..8tq+7 of column g; step0: b.x,b.y ; step1: b.z,b.w
            hv=xp[g][8*tq:8*tq+8]
            b0=hv[0:2] if step==0 else hv[4:6]; b1=hv[2:4] if step==0 else hv[6:8]
            B[2*tq][g],B[2*tq+1][g]=b0; B[2*tq+8][g],B[2*tq+9][g]=b1
        C+=A@B
    err=np.abs(C-ref).max()/np.abs(ref).max()
    if err>1e-9: ok=False; print('trial',trial,'err',err)
print('ok' if ok else 'MISMATCH')

# The cluster's K-split reduction (mmm_iq4xs.cuh; float4 layout since session 24): CTA z adds the float4s e of the
# partial tile laid out by tile_at, ((wmn * MT + m) * NF + f) * 32 + lane with wmn = wm + WM * wn (a lane's 4
# accumulators of fragment (m, f)), and decodes e back into the (row, column) of accumulator 0 that the direct
# store path gives; store4 puts accumulator i at (+8 if i >= 2, +1 if i odd). Check that the decode matches the
# store path, that each (row, column) of the tile comes from exactly one (e, i), and that the KS ranges
# [z * E4 / KS, (z + 1) * E4 / KS) cover every e once.
def store_rc(MT, WM, NF, wm, wn, m, f, i, lane):
    g, tq = lane >> 2, lane & 3
    return 16 * (MT * wm + m) + g + (8 if i >= 2 else 0), 8 * NF * wn + 8 * f + 2 * tq + (i & 1)
def decode_rc(MT, WM, NF, e, i):
    ln, q = e & 31, e >> 5
    f, m, wmn = q % NF, (q // NF) % MT, q // (NF * MT)
    return 16 * (MT * (wmn % WM) + m) + (ln >> 2) + (8 if i >= 2 else 0), 8 * NF * (wmn // WM) + 8 * f + 2 * (ln & 3) + (i & 1)
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
                            if decode_rc(MT, WM, NF, e, i) != rc: red_ok = False
                            seen.add(rc)
    if len(seen) != 4 * E4 or seen != {(r, c) for r in range(16 * MT * WM) for c in range(8 * NF * WN)}: red_ok = False
    for KS in range(1, 9):
        cover = [0] * E4
        for z in range(KS):
            for e in range(z * E4 // KS, (z + 1) * E4 // KS): cover[e] += 1
        if any(c != 1 for c in cover): red_ok = False
print('cluster reduction mapping: ' + ('ok' if red_ok else 'MISMATCH'))

# Fixed staging (issue_w / issue_x): thread t copies chunk jw = t & 7 of rows t >> 3 + i * NT / 8 and the tail
# (chunk 8) of rows t + i * NT; activation lane t & 31 of columns t >> 5 + i * NT / 32 (16 * t + 16 * NT * i bytes
# into the block's contiguous run of the tile's columns, mmm_xh_index). Every (row, chunk) of the
# stage and every (column, 16-byte piece) is copied exactly once, and a thread's rows share one parity of R * nb.
stage_ok = True
for (NF, MT, WM, WN, WK) in [(2, 1, 1, 1, 8), (2, 2, 2, 1, 4), (2, 2, 4, 1, 1), (2, 2, 4, 1, 2), (2, 4, 2, 1, 2),
                             (2, 4, 4, 1, 1), (4, 1, 2, 1, 8), (4, 2, 2, 1, 2), (4, 2, 4, 1, 1), (4, 2, 4, 1, 2),
                             (4, 2, 4, 2, 1), (4, 4, 2, 1, 2), (8, 1, 2, 1, 8), (8, 1, 4, 1, 2), (8, 2, 2, 1, 2),
                             (8, 2, 4, 1, 1), (8, 2, 4, 1, 2)]:
    BM, BN, NT = 16 * MT * WM, 8 * NF * WN, 32 * WM * WN * WK
    WROWS, TCH = NT // 8, -(-BM // NT)
    WCH = -(-BM // WROWS)
    XROWS = NT // 32
    XCH = BN * 32 // NT
    if (BN * 32) % NT or 64 % BN: stage_ok = False  # the kernel's static_assert
    w, x = [], []
    for t in range(NT):
        rows = []
        for i in range(WCH):
            r = (t >> 3) + i * WROWS
            if r < BM: w.append((r, t & 7)); rows.append(r)
        for i in range(TCH):
            r = t + i * NT
            if r < BM: w.append((r, 8)); rows.append(r)
        for i in range(XCH):
            n = (t >> 5) + i * XROWS
            if n < BN: x.append((n, t & 31))
            # issue_x's source: 16 * t + 16 * NT * i bytes past the tile's first column in the block-major run
            if 16 * t + 16 * NT * i != 512 * n + 16 * (t & 31): stage_ok = False
        for row0 in (0, 128, 37 * 128):
            for nb in (16, 43):
                pars = {((row0 + r) * nb) & 1 for r in rows if (r - (t >> 3)) % WROWS == 0}
                tpars = {((row0 + r) * nb) & 1 for r in rows if r % NT == t}
                if len(pars) > 1 or len(tpars) > 1: stage_ok = False
    if sorted(w) != [(r, j) for r in range(BM) for j in range(9)]: stage_ok = False
    if sorted(x) != [(n, j) for n in range(BN) for j in range(32)]: stage_ok = False
print('fixed staging mapping: ' + ('ok' if stage_ok else 'MISMATCH'))

# convert_x_f16's block-major layout (mmm_xh_index) against what a CTA stages: block u's columns [col0, col0 + BN)
# as one run from (u * cols_padded + col0) * 256 halves, column n's half j = x[col0 + n][256 u + k] with
# xq_pos(k % 32) == j % 32 in k's 32-group; pad columns zero.
def xh_index(ncols, k, n):
    cp = -(-ncols // 64) * 64
    return ((k // 256) * cp + n) * 256 + ((k % 256) & ~31) + xq_pos(k & 31)
layout_ok = True
for ncols, K in ((5, 512), (64, 256), (65, 768), (130, 1024)):
    cp = -(-ncols // 64) * 64
    xs = rng.normal(size=(ncols, K))
    xh = np.full(cp * K, np.nan)
    for n in range(cp):
        for k in range(K): xh[xh_index(ncols, k, n)] = xs[n][k] if n < ncols else 0.0
    if np.isnan(xh).any(): layout_ok = False
    inv = {xq_pos(i): i for i in range(32)}
    for BN in (16, 32, 64):
        for col0 in range(0, cp, BN):
            for u in range(K // 256):
                run = xh[(u * cp + col0) * 256:(u * cp + col0 + BN) * 256]
                for n in range(BN):
                    for j in range(256):
                        want = xs[col0 + n][256 * u + (j & ~31) + inv[j & 31]] if col0 + n < ncols else 0.0
                        if run[256 * n + j] != want: layout_ok = False
print('activation layout: ' + ('ok' if layout_ok else 'MISMATCH'))

# iq4xs_scales_f16 / iq4xs_ls_select: the warp's sub-block scales gathered as bytes and turned into fp16 pairs,
# against iq4xs_sub_scale and the float path they replace (__float2half_rn(2^8 d * (ls - 32))).
def h2f(b): return float(np.frombuffer(struct.pack('<H', b & 0xffff), dtype=np.float16)[0])
def f2hbits(x): return int(np.frombuffer(np.float16(x).tobytes(), dtype=np.uint16)[0])
def ls_select(SBW, wk):
    if SBW == 8: return 0x5140
    if SBW == 4: return 0x7362 if wk else 0x5140
    if SBW == 2: return ((4 + wk) << 4) | wk
    return 4 + (wk >> 1) if wk & 1 else wk >> 1
def scales_f16(SBW, hx, hy, sel):
    x = hx >> 16
    x = (x | (x << 8)) & 0x00ff00ff
    x = (x | (x << 4)) & 0x0f0f0f0f
    x = (x | (x << 2)) & 0x33333333
    ev = (hy & 0x0f0f0f0f) | ((x << 4) & 0xf0f0f0f0)
    od = ((hy >> 4) & 0x0f0f0f0f) | (x & 0xf0f0f0f0)
    d = np.float16(h2f(hx)) * np.float16(256.0)  # exact (checked below)
    ls = [prmt(ev, od, sel), prmt(ev, od, 0x7362)]
    out = []
    for q in range((SBW + 1) // 2):
        h = prmt(ls[q >> 1], 0x64646464, 0x4342 if q & 1 else 0x4140)
        for half in (h & 0xffff, h >> 16):
            out.append(float(np.float16(np.float16(h2f(half) - 1056.0) * d)))  # numpy fp16 mul: exact, rounded once
    return out
scale_ok = True
srng = np.random.default_rng(7)
ds = [f2hbits(v) for v in (1e-5, 3.1e-4, -2.2e-3, 6.0e-8, -1.0e-7, 0.01, 0.5)]  # incl. fp16 subnormals
for trial in range(4000):
    hx = (int(srng.integers(0, 65536)) << 16) | ds[trial % len(ds)]
    hy = int(srng.integers(0, 2 ** 32))
    d = h2f(hx)
    if float(np.float16(d) * np.float16(256.0)) != d * 256.0: scale_ok = False
    for SBW in (1, 2, 4, 8):
        for wk in range(8 // SBW):
            got = scales_f16(SBW, hx, hy, ls_select(SBW, wk))
            for i in range(SBW):
                sb = SBW * wk + i
                ls = ((hy >> (4 * sb)) & 15) | (((hx >> 16 >> (2 * sb)) & 3) << 4)
                want = float(np.float16(np.float32(256.0 * d) * np.float32(ls - 32)))
                if got[i] != want: scale_ok = False
print('sub-block scales: ' + ('ok' if scale_ok else 'MISMATCH'))
