// What this x86-64 CPU advertises (CPUID, XCR0, AMX permission) and what it
// actually executes (each instruction tried in a child process). Diagnostic.
#define _GNU_SOURCE
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int try(const char *name, void (*f)(void)) {
    pid_t p = fork();
    if (p == 0) { f(); _exit(0); }
    int st = 0;
    waitpid(p, &st, 0);
    int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    printf("exec %-22s %s\n", name, ok ? "ok" : (WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "failed"));
    return ok;
}

static void t_avx512f(void) { __asm__ volatile("vpxord %%zmm0, %%zmm0, %%zmm0" ::: "xmm0"); }
static void t_vnni(void) { __asm__ volatile("vpdpbusd %%zmm1, %%zmm2, %%zmm0" ::: "xmm0"); }
static void t_bf16(void) { __asm__ volatile("vdpbf16ps %%zmm1, %%zmm2, %%zmm0" ::: "xmm0"); }
static void t_fp16(void) { __asm__ volatile("vaddph %%zmm1, %%zmm2, %%zmm0" ::: "xmm0"); }
static void t_vbmi(void) { __asm__ volatile("vpermb %%zmm1, %%zmm2, %%zmm0" ::: "xmm0"); }
static unsigned char cfg[64] __attribute__((aligned(64)));
static void t_amx_noperm(void) {
    memset(cfg, 0, 64); cfg[0] = 1; cfg[16] = 64; cfg[48] = 16;
    __asm__ volatile("ldtilecfg %0\n\ttilezero %%tmm0\n\ttilerelease" :: "m"(cfg));
}
static void t_amx_perm(void) {
    long r = syscall(SYS_arch_prctl, 0x1023, 18);
    if (r != 0) _exit(3);
    t_amx_noperm();
}

int main(void) {
    unsigned a, b, c, d;
    __cpuid_count(7, 0, a, b, c, d);
    printf("cpuid7.0: avx512f=%u avx512bw=%u avx512vbmi=%u avx512vnni=%u avx512fp16=%u amx_bf16=%u amx_tile=%u amx_int8=%u\n",
           (b >> 16) & 1, (b >> 30) & 1, (c >> 1) & 1, (c >> 11) & 1, (d >> 23) & 1, (d >> 22) & 1, (d >> 24) & 1, (d >> 25) & 1);
    __cpuid_count(7, 1, a, b, c, d);
    printf("cpuid7.1: avx512bf16=%u avxvnni=%u\n", (a >> 5) & 1, (a >> 4) & 1);
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    uint64_t xcr0 = ((uint64_t)hi << 32) | lo;
    printf("xcr0=0x%llx (avx512 state %s, xtilecfg %llu, xtiledata %llu)\n", (unsigned long long)xcr0,
           (xcr0 & 0xe0) == 0xe0 ? "on" : "off", (unsigned long long)(xcr0 >> 17) & 1, (unsigned long long)(xcr0 >> 18) & 1);
    uint64_t perm = 0;
    long g = syscall(SYS_arch_prctl, 0x1022, &perm);
    printf("arch_prctl GET_XCOMP_PERM rc=%ld perm=0x%llx\n", g, (unsigned long long)perm);
    long r = syscall(SYS_arch_prctl, 0x1023, 18);
    printf("arch_prctl REQ_XCOMP_PERM(18) rc=%ld\n", r);
    try("avx512f", t_avx512f);
    try("avx512vnni", t_vnni);
    try("avx512bf16", t_bf16);
    try("avx512fp16", t_fp16);
    try("avx512vbmi", t_vbmi);
    try("amx (no permission)", t_amx_noperm);
    try("amx (with permission)", t_amx_perm);
    return 0;
}
