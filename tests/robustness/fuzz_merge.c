/* qsdpa_merge with random (and faulty) arguments, against a double-precision
 * oracle of out = sum_i exp(lse_i - lse) out_i (all -inf: the plain sum). */
#include "fuzz_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void run_merge_case(test_rng *r, int64_t index, bool verbose) {
    int n = (int)test_rng_int(r, 1, 4);
    int64_t sh[4] = {test_rng_int(r, 1, 2), test_rng_int(r, 1, 3), test_rng_int(r, 1, 5), test_rng_int(r, 1, 40)};
    gbuf go[4], gl[4], gout, glse, spare;
    memset(go, 0, sizeof go), memset(gl, 0, sizeof gl), memset(&glse, 0, sizeof glse);
    qsdpa_tensor outs[4], lses[4], out, lse;
    for (int i = 0; i < n; i++) {
        outs[i] = alloc_tensor(r, &go[i], QSDPA_DTYPE_F32, 4, sh, chance(r, 0.3));
        fill_tensor(r, &outs[i], 1.0);
        lses[i] = alloc_tensor(r, &gl[i], QSDPA_DTYPE_F32, 3, sh, chance(r, 0.3));
        int64_t idx[4] = {0, 0, 0, 0};
        do ((float *)lses[i].data)[fuzz_offset(&lses[i], idx)] = chance(r, 0.2) ? -INFINITY : (float)(3.0 * test_rng_normal(r));
        while (fuzz_next(&lses[i], idx));
    }
    qsdpa_dtype od = any_float(r);
    out = alloc_tensor(r, &gout, od, 4, sh, chance(r, 0.3));
    bool with_lse = chance(r, 0.5);
    if (with_lse) lse = alloc_tensor(r, &glse, QSDPA_DTYPE_F32, 3, sh, chance(r, 0.3));
    gb_alloc(&spare, 64);
    int expect = EXPECT_OK, nn = n;
    bool null_ctx = false, null_outs = false, null_lses = false, null_out = false;
    char m[120] = "";
    if (chance(r, 0.45)) {
        expect = EXPECT_ERR;
        int i = (int)test_rng_int(r, 0, n - 1), d = (int)test_rng_int(r, 0, 2);
        switch (test_rng_int(r, 0, 13)) {
        case 0: nn = chance(r, 0.5) ? 0 : -1; snprintf(m, sizeof m, "n = %d", nn); break;
        case 1: null_ctx = true; snprintf(m, sizeof m, "ctx = NULL"); break;
        case 2: null_outs = true; snprintf(m, sizeof m, "outs = NULL"); break;
        case 3: null_lses = true; snprintf(m, sizeof m, "lses = NULL"); break;
        case 4: null_out = true; snprintf(m, sizeof m, "out = NULL"); break;
        case 5: outs[i].shape[d] += 1; snprintf(m, sizeof m, "outs[%d].shape[%d] + 1", i, d); break;
        case 6: lses[i].shape[d] += 1; snprintf(m, sizeof m, "lses[%d].shape[%d] + 1", i, d); break;
        case 7: outs[i].dtype = QSDPA_DTYPE_F16; snprintf(m, sizeof m, "outs[%d].dtype f16", i); break;
        case 8: lses[i].dtype = QSDPA_DTYPE_BF16; snprintf(m, sizeof m, "lses[%d].dtype bf16", i); break;
        case 9: out.dtype = QSDPA_DTYPE_U8; snprintf(m, sizeof m, "out.dtype u8"); break;
        case 10: out.data = outs[i].data; out.dtype = QSDPA_DTYPE_F32; memcpy(out.stride, outs[i].stride, sizeof out.stride);
            snprintf(m, sizeof m, "out on outs[%d]'s memory", i); break;
        case 11:
            if (!with_lse) { lse = alloc_tensor(r, &glse, QSDPA_DTYPE_F32, 3, sh, false); with_lse = true; }
            if (chance(r, 0.5)) { lse.data = out.data; snprintf(m, sizeof m, "lse_out on out's memory"); }
            else { lse.data = lses[i].data; snprintf(m, sizeof m, "lse_out on lses[%d]'s memory", i); }
            break;
        case 12: { qsdpa_tensor *t = chance(r, 0.5) ? &outs[i] : &out; t->stride[3] = 2;
            expect = sh[3] > 1 ? EXPECT_ERR : EXPECT_ANY; snprintf(m, sizeof m, "inner stride 2"); break; }
        default: out.stride[d] = 0; expect = fuzz_self_overlap(&out) ? EXPECT_ERR : EXPECT_ANY;
            snprintf(m, sizeof m, "out.stride[%d] = 0", d); break;
        }
    }
    snprintf(fuzz_case_desc, sizeof fuzz_case_desc, "qsdpa_merge n=%d shape [%lld,%lld,%lld,%lld] out %s lse_out %d%s%s", n,
             (long long)sh[0], (long long)sh[1], (long long)sh[2], (long long)sh[3], qsdpa_dtype_name(od), with_lse,
             m[0] ? " FAULT: " : "", m);
    if (verbose) fprintf(stderr, "case %lld: %s\n", (long long)index, fuzz_case_desc);
    gbuf *all[11] = {&gout, &glse, &spare, &go[0], &go[1], &go[2], &go[3], &gl[0], &gl[1], &gl[2], &gl[3]};
    for (int i = 0; i < 11; i++) gb_snapshot(all[i]);
    /* on a device (fuzz_device: test_cuda_random) the call reads and writes copies of every buffer, which
     * come back before the checks below */
    qsdpa_tensor call_outs[4], call_lses[4], call_out = out, call_lse = lse;
    memcpy(call_outs, outs, sizeof outs), memcpy(call_lses, lses, sizeof lses);
    gbuf *live[11];
    int nlive = 0;
    for (int i = 0; i < 11; i++)
        if (all[i]->raw) live[nlive++] = all[i];
    if (fuzz_device) {
        fuzz_device->upload(live, nlive);
        for (int i = 0; i < n; i++)
            call_outs[i].data = fuzz_device->at(outs[i].data), call_lses[i].data = fuzz_device->at(lses[i].data);
        call_out.data = fuzz_device->at(out.data);
        if (with_lse) call_lse.data = fuzz_device->at(lse.data);
    }
    qsdpa_status st = qsdpa_merge(null_ctx ? NULL : fuzz_ctx_auto, nn, null_outs ? NULL : call_outs,
                                  null_lses ? NULL : call_lses, null_out ? NULL : &call_out, with_lse ? &call_lse : NULL);
    if (fuzz_device) fuzz_device->download(live, nlive);
    if (st != QSDPA_OK) fuzz_check_message("qsdpa_merge", st);
    if (expect == EXPECT_ERR && st == QSDPA_OK) fuzz_fail("invalid call accepted", "qsdpa_merge returned QSDPA_OK for: %s", m);
    if (expect == EXPECT_OK && st != QSDPA_OK) fuzz_fail("valid call rejected", "qsdpa_merge: %s", qsdpa_last_error());
    for (int i = 0; i < 11; i++) {
        bool is_out = st == QSDPA_OK && (all[i] == &gout || all[i] == &glse);
        if (is_out ? !gb_guards_ok(all[i]) : !gb_unchanged(all[i]))
            fuzz_fail(is_out ? "guard bytes around an output overwritten"
                             : st == QSDPA_OK ? "an input buffer was modified" : "a failing call wrote to a buffer",
                      "qsdpa_merge buffer %d", i);
    }
    if (st == QSDPA_OK && expect != EXPECT_ERR) { /* the double-precision oracle */
        fuzz_stats.merged++;
        double rel = od == QSDPA_DTYPE_F32 ? 0x1p-23 : od == QSDPA_DTYPE_F16 ? 0x1p-10 : 0x1p-7;
        int64_t idx[4] = {0, 0, 0, 0};
        bool reported = false;
        do {
            double mx = -INFINITY, tot = 0.0, acc = 0.0;
            for (int i = 0; i < n; i++) mx = fmax(mx, ((float *)lses[i].data)[fuzz_offset(&lses[i], idx)]);
            for (int i = 0; i < n; i++) {
                double l = ((float *)lses[i].data)[fuzz_offset(&lses[i], idx)];
                double w = mx == -INFINITY ? 1.0 : exp(l - mx);
                tot += w;
                acc += w * ((float *)outs[i].data)[fuzz_offset(&outs[i], idx)];
            }
            double want = mx == -INFINITY ? acc : acc / tot, got = qsdpa_load_float(out.data, od, fuzz_offset(&out, idx));
            if (!(fabs(got - want) <= rel * fabs(want) + 1e-6) && !reported) {
                fuzz_fail("merge differs from the double-precision oracle", "at [%lld,%lld,%lld,%lld]: %.9g, want %.9g",
                          (long long)idx[0], (long long)idx[1], (long long)idx[2], (long long)idx[3], got, want);
                reported = true;
            }
            if (with_lse && idx[3] == 0) {
                double wl = mx == -INFINITY ? -INFINITY : mx + log(tot);
                double gl2 = ((float *)lse.data)[fuzz_offset(&lse, idx)];
                if (!(gl2 == wl || fabs(gl2 - wl) <= 1e-6 * (1.0 + fabs(wl))) && !reported) {
                    fuzz_fail("merge lse differs from the oracle", "lse %.9g, want %.9g", gl2, wl);
                    reported = true;
                }
            }
        } while (fuzz_next(&out, idx));
    }
    for (int i = 0; i < 11; i++) gb_free(all[i]);
}

