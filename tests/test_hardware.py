"""plumbing/hardware.py: the device, and bfloat16 where the processor has it."""
import contextlib
import io
import unittest.mock

import torch

from plumbing import hardware

from helpers import NATIVE_BF16_CPU, TestCase, Trains


class TestDevice(TestCase):
    def test_apple_mps_only_with_torch_2_9_or_newer(self):
        for version, device in (("2.8.0", "cpu"), ("2.9.1", "mps"), ("2.10.0", "mps")):
            with self.subTest(version), \
                    unittest.mock.patch.object(torch, "__version__", version), \
                    unittest.mock.patch.object(torch.cuda, "is_available", lambda: False), \
                    unittest.mock.patch.object(torch.backends.mps, "is_available", lambda: True), \
                    contextlib.redirect_stderr(io.StringIO()) as err:
                self.assertEqual(hardware.pick_device(), device)
            self.assertEqual("wrong losses" in err.getvalue(), device == "cpu")


class TestBfloat16(Trains):
    def test_auto_picks_bfloat16_where_the_processor_multiplies_it_natively(self):
        for capabilities, feature in (({"avx512_bf16": True, "avx2": True}, "avx512_bf16"),
                                      ({"amx_bf16": True, "avx512_bf16": True}, "amx_bf16"),
                                      ({"avx512_f": True, "avx2": True}, None), ({}, None)):
            with self.subTest(capabilities), unittest.mock.patch.object(
                    torch.cpu, "get_capabilities", lambda: capabilities, create=True):
                self.assertEqual(NATIVE_BF16_CPU(), feature)
        with unittest.mock.patch.object(hardware, "native_bf16_cpu", lambda: "avx512_bf16"):
            self.assertEqual(hardware.use_bf16("auto", "cpu"),
                             (True, "the CPU multiplies it natively (avx512_bf16)"))
            self.assertEqual(hardware.use_bf16("float32", "cpu"), (False, "--dtype float32"))
            _, log = self.train("--epochs", "0")
            self.assertIn("on cpu in bfloat16 (the CPU multiplies it natively (avx512_bf16))", log)
        self.assertEqual(hardware.use_bf16("auto", "cpu"),
                         (False, "the CPU has no native bfloat16"))
        _, log = self.train("--epochs", "0")
        self.assertIn("on cpu in float32 (the CPU has no native bfloat16)", log)

    def test_bfloat16_learns_as_float32_does_on_both_paths(self):
        """Comparing the speed layer with the plain path under one dtype cannot catch a
        bfloat16 that does not learn: when one autocast region spanned the optimizer steps,
        both paths computed every step with the first step's weights, and agreed. So each path
        is held against float32 on the same seed and data: the validation loss falls as far."""
        flags = ["--epochs", "2", "--eval-freq", "1", "--lr", "1e-3"]
        f32, _ = self.train(*flags, "--dtype", "float32", "--no-fast", out="f32")
        fell = lambda out: self.losses(out)[0][1] - self.losses(out)[-1][1]
        self.assertGreater(fell("f32"), 0.05)  # float32 learns: there is something to match
        plain, log = self.assert_fast_matches_plain([*flags, "--dtype", "bfloat16"],
                                                    (((), "cache in RAM"),), tol=1e-3)
        self.assertIn("on cpu in bfloat16", log)
        for out in ("plain", "fast"):
            with self.subTest(out):
                self.assertGreater(fell(out), 0.7 * fell("f32"), self.losses(out))
        weights = lambda model: torch.cat([p.flatten() for p in model.parameters()])
        # the plain path did compute in bfloat16: further from float32 than the tolerance above
        self.assertGreater((weights(plain) - weights(f32)).abs().max().item(), 1e-3)
