"""Stable Diffusion WebUI: command-line options, added before the host parses its arguments."""


def preload(parser):
    # dest realesrgan_tiled_models_path: the host passes it to our upscaler class by that name
    parser.add_argument("--realesrgan-tiled-models-path", type=str, default=None,
                        help="Another folder of Real-ESRGAN-family models (.pth, .pt, .safetensors, ncnn .param+.bin) "
                             "to list as '<file stem> (tiled)' upscalers, besides models/RealESRGAN-tiled, "
                             "models/ESRGAN and models/RealESRGAN.")
