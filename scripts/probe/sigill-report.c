// LD_PRELOAD helper: on SIGILL, print the faulting instruction's address,
// library, symbol and bytes, then exit 132. Diagnostic only.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

static void on_ill(int sig, siginfo_t *si, void *uc_) {
    ucontext_t *uc = (ucontext_t *)uc_;
    unsigned char *pc = (unsigned char *)uc->uc_mcontext.gregs[REG_RIP];
    Dl_info d;
    memset(&d, 0, sizeof d);
    dladdr(pc, &d);
    fprintf(stderr, "SIGILL at %p (si_addr %p, code %d) in %s, symbol %s+0x%lx (lib base %p)\nbytes:", (void *)pc,
            si->si_addr, si->si_code, d.dli_fname ? d.dli_fname : "?", d.dli_sname ? d.dli_sname : "?",
            d.dli_saddr ? (unsigned long)(pc - (unsigned char *)d.dli_saddr) : 0UL, d.dli_fbase);
    for (int i = 0; i < 16; i++) fprintf(stderr, " %02x", pc[i]);
    fprintf(stderr, "\noffset in lib: 0x%lx\n", (unsigned long)(pc - (unsigned char *)d.dli_fbase));
    _exit(132);
    (void)sig;
}

__attribute__((constructor)) static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_ill;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGILL, &sa, NULL);
}
