"""Writes the example workflows (UI format, as ComfyUI saves them) from compact API specs,
and their thumbnails. A file's name is the title ComfyUI's template browser shows (it
shows nothing else for a custom node's template), and each workflow opens with a note
that says what it does.

    python example_workflows/build_examples.py

Widgets not named here take the node's default, so the files follow the node
definitions. Thumbnails illustrate what a workflow does, not model outputs: the GVM ones
with the sample clip's ground-truth matte (``assets/make_assets.py``), the VMem ones with
the starting image and a top view of the cameras walked through. ComfyUI lists the resulting ``*.json`` under Workflow > Browse Templates;
``tests/test_examples.py`` checks that the committed files equal what this writes.
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

LOADER = {"class_type": "CVS_ModelLoader", "inputs": {"family": "gvm"}, "_meta": {"title": "Load GVM"}}
SAMPLE = {"class_type": "CVS_LoadVideo", "inputs": {"video": "cvs_sample.mp4"}, "_meta": {"title": "Load video"}}

VMEM_LOADER = {"class_type": "CVS_ModelLoader", "inputs": {"family": "vmem"}, "_meta": {"title": "Load VMem"}}
DEPTH_LOADER = {"class_type": "CVS_ModelLoader", "inputs": {"family": "depth_anything_v2"},
                "_meta": {"title": "Load Depth Anything V2"}}
ROOM = {"class_type": "CVS_LoadVideo", "inputs": {"video": "cvs_room.png"}, "_meta": {"title": "Load start image"}}
PATH_ACTIONS = "turn_left 30, move_forward 0.5, turn_right 60, move_backward 0.5, turn_left 30"
VIDEOMV_PROMPT = "a red ceramic teapot"
TURNTABLE_VIEWS = 72  # 3 s at 24 fps
V2V_PROMPT = "a person walking across a sunny hillside landscape"
V2V_PATHS = {  # three overlapping camera paths from the video's own first camera (OpenCV: y down, z forward)
    "Turn 1: pan left": [{"position": [0, 0, 0], "look_at": [0, 0, 1]}, {"position": [0, 0, 0], "look_at": [-0.4, 0, 1]}],
    "Turn 2: pan right": [{"position": [0, 0, 0], "look_at": [0, 0, 1]}, {"position": [0, 0, 0], "look_at": [0.4, 0, 1]}],
    "Turn 3: pan left, half": [{"position": [0, 0, 0], "look_at": [0, 0, 1]},
                               {"position": [0, 0, 0], "look_at": [-0.2, 0, 1]}],
}

EDIT_PROMPT = "Change the walking figure into a knight in shining silver armour"
EDIT_SEGMENTS = (17, 4)  # segment length (4k + 1) and overlap for the 48-frame sample clip: 4 segments


def _memory_v2v_edit_segments() -> dict:
    """The sample clip edited in overlapping segments with LucyEdit, each conditioned on the earlier ones, stitched."""
    return {
        "1": {"class_type": "CVS_ModelLoader", "inputs": {"family": "lucyedit"}, "_meta": {"title": "Load LucyEdit"}},
        "2": {"class_type": "CVS_ModelLoader", "inputs": {"family": "dinov2"}, "_meta": {"title": "Load DINOv2"}},
        "3": SAMPLE,
        "4": {"class_type": "CVS_SplitVideoSegments",
              "inputs": {"video": ["3", 0], "segment_length": EDIT_SEGMENTS[0], "overlap": EDIT_SEGMENTS[1]},
              "_meta": {"title": "Split into 17-frame segments"}},
        "5": {"class_type": "CVS_VideoMemory", "inputs": {"name": "v2v_edit_segments", "reset": True},
              "_meta": {"title": "Video memory (new each run)"}},
        "6": {"class_type": "CVS_MemoryV2VEditSegments",
              "inputs": {"model": ["1", 0], "memory": ["5", 0], "segments": ["4", 0], "dinov2": ["2", 0],
                         "prompt": EDIT_PROMPT, "run": "all remaining segments"},
              "_meta": {"title": "Edit every segment with memory"}},
        "7": {"class_type": "CVS_StitchEditedSegments",
              "inputs": {"model": ["1", 0], "memory": ["6", 1], "segments": ["4", 0]},
              "_meta": {"title": "Stitch with cross-fades"}},
        "8": {"class_type": "CVS_SaveVideo", "inputs": {"images": ["7", 0], "fps": ["3", 3], "format": "h264-mp4",
                                                        "filename_prefix": "ConsistentVideo/v2v_edited"},
              "_meta": {"title": "Save the edited video"}},
    }


SPLAT_PATH = [{"position": [-0.9, -0.45, -2.4], "look_at": [0, 0.2, 0.6]},  # around the bundled splat room
              {"position": [0.9, -0.45, -2.4], "look_at": [0, 0.2, 0.6]}]
VIDEOSCENE_LOADER = {"class_type": "CVS_ModelLoader", "inputs": {"family": "videoscene"},
                     "_meta": {"title": "Load VideoScene"}}
PHOTOS = ("cvs_photo_left.png", "cvs_photo_right.png")  # two renders of the bundled splat room (assets/make_assets.py)


def _videoscene_two_photos() -> dict:
    """Two photos -> NoPoSplat Gaussians and the two poses -> the path between them -> coarse render -> refined."""
    return {
        "1": {"class_type": "CVS_ModelLoader", "inputs": {"family": "noposplat"}, "_meta": {"title": "Load NoPoSplat"}},
        "2": {"class_type": "CVS_LoadImage", "inputs": {"image": PHOTOS[0]}, "_meta": {"title": "Photo 1"}},
        "3": {"class_type": "CVS_LoadImage", "inputs": {"image": PHOTOS[1]}, "_meta": {"title": "Photo 2"}},
        "4": {"class_type": "CVS_VideoSceneTwoPhotos",
              "inputs": {"model": ["1", 0], "image_a": ["2", 0], "image_b": ["3", 0]},
              "_meta": {"title": "Two photos to Gaussians and poses"}},
        "5": {"class_type": "CVS_CameraPathBetween",
              "inputs": {"cameras": ["4", 1], "frames": 49, "easing": "cosine", "rule": "pivot"},
              "_meta": {"title": "Path between the two views (49 frames)"}},
        "6": {"class_type": "CVS_RenderSplats",
              "inputs": {"gaussians": ["4", 0], "cameras": ["5", 0], "background_r": 0.0, "background_g": 0.0,
                         "background_b": 0.0},
              "_meta": {"title": "Coarse render"}},
        "7": VIDEOSCENE_LOADER,
        "8": {"class_type": "CVS_VideoSceneRefine", "inputs": {"model": ["7", 0], "video": ["6", 0]},
              "_meta": {"title": "VideoScene refine"}},
        "9": {"class_type": "CVS_SaveVideo", "inputs": {"images": ["8", 0], "fps": "8", "format": "h264-mp4",
                                                        "filename_prefix": "ConsistentVideo/two_photos_scene"},
              "_meta": {"title": "Save scene video"}},
        "10": {"class_type": "CVS_SaveVideo", "inputs": {"images": ["6", 0], "fps": "8", "format": "h264-mp4",
                                                         "filename_prefix": "ConsistentVideo/two_photos_coarse"},
               "_meta": {"title": "Save coarse render"}},
        "11": {"class_type": "CVS_SaveSplats",
               "inputs": {"gaussians": ["4", 0], "filename_prefix": "ConsistentVideo/two_photos_splats"},
               "_meta": {"title": "Save the Gaussians (.ply)"}},
    }



def _memory_v2v_three_turns() -> dict:
    """Three re-render turns of one video along overlapping paths, each conditioned on the earlier ones."""
    graph = {
        "1": {"class_type": "CVS_ModelLoader", "inputs": {"family": "recammaster"},
              "_meta": {"title": "Load ReCamMaster"}},
        "2": SAMPLE,
        "3": {"class_type": "CVS_VideoMemory", "inputs": {"name": "v2v_three_turns", "reset": True},
              "_meta": {"title": "Video memory (new each run)"}},
        "4": {"class_type": "CVS_MemoryV2VEncodeSource", "inputs": {"model": ["1", 0], "video": ["2", 0], "frames": 41},
              "_meta": {"title": "Encode the video (41 frames)"}},
    }
    memory = ["3", 0]
    for turn, (title, keyframes) in enumerate(V2V_PATHS.items()):
        path_id, render_id, save_id = (str(5 + 3 * turn + k) for k in range(3))
        graph[path_id] = {"class_type": "CVS_KeyframeCameras",
                          "inputs": {"keyframes": json.dumps(keyframes), "frames_per_segment": 40},
                          "_meta": {"title": f"{title} (path)"}}
        graph[render_id] = {"class_type": "CVS_MemoryV2VRerender",
                            "inputs": {"model": ["1", 0], "memory": memory, "source": ["4", 0],
                                       "cameras": [path_id, 0], "prompt": V2V_PROMPT, "seed": turn},
                            "_meta": {"title": title}}
        graph[save_id] = {"class_type": "CVS_SaveVideo",
                          "inputs": {"images": [render_id, 0], "fps": ["2", 3], "format": "h264-mp4",
                                     "filename_prefix": f"ConsistentVideo/v2v_turn{turn + 1}"},
                          "_meta": {"title": f"Save turn {turn + 1}"}}
        memory = [render_id, 2]
    return graph

EXAMPLES = {
    # Matte a clip: soft alpha as a grey video, and the foreground with alpha as a WebM.
    "gvm_matte_video": {
        "1": LOADER,
        "2": SAMPLE,
        "3": {"class_type": "CVS_GVMMatte", "inputs": {"model": ["1", 0], "images": ["2", 0]},
              "_meta": {"title": "GVM matte"}},
        "4": {"class_type": "CVS_SaveVideo",
              "inputs": {"mask": ["3", 0], "fps": ["2", 3], "format": "h264-mp4",
                         "filename_prefix": "ConsistentVideo/gvm_alpha"},
              "_meta": {"title": "Save alpha matte"}},
        "5": {"class_type": "CVS_SaveVideo",
              "inputs": {"images": ["3", 1], "mask": ["3", 0], "fps": ["2", 3], "format": "vp9-webm",
                         "filename_prefix": "ConsistentVideo/gvm_foreground"},
              "_meta": {"title": "Save foreground with alpha"}},
    },
    # Matte and composite over a new background image.
    "gvm_composite_background": {
        "1": LOADER,
        "2": SAMPLE,
        "3": {"class_type": "CVS_LoadVideo", "inputs": {"video": "cvs_background.png"},
              "_meta": {"title": "Load background"}},
        "4": {"class_type": "CVS_GVMMatte",
              "inputs": {"model": ["1", 0], "images": ["2", 0], "background": ["3", 0]},
              "_meta": {"title": "GVM matte + composite"}},
        "5": {"class_type": "CVS_SaveVideo",
              "inputs": {"images": ["4", 2], "fps": ["2", 3], "format": "h264-mp4",
                         "filename_prefix": "ConsistentVideo/gvm_composite"},
              "_meta": {"title": "Save composite"}},
    },
    # Long videos: file to file, streaming (memory bounded by the window, not the length).
    "gvm_matte_long_video_file": {
        "1": LOADER,
        "2": {"class_type": "CVS_GVMMatteVideoFile",
              "inputs": {"model": ["1", 0], "video": "cvs_sample.mp4", "format": "prores4444-mov",
                         "write_foreground": True, "write_composite": True,
                         "filename_prefix": "ConsistentVideo/gvm_file"},
              "_meta": {"title": "GVM matte video file"}},
    },
    # VMem, one action per queue run: change 'action' and queue again; the walk continues from the
    # memory file, and the whole walk so far is saved as a video each time.
    "vmem_walk_step_by_step": {
        "1": VMEM_LOADER,
        "2": DEPTH_LOADER,
        "3": ROOM,
        "4": {"class_type": "CVS_SurfelMemory", "inputs": {"name": "vmem_walk"},
              "_meta": {"title": "Walk memory (reset to start over)"}},
        "5": {"class_type": "CVS_VMemNavigate",
              "inputs": {"model": ["1", 0], "depth_model": ["2", 0], "memory": ["4", 0], "image": ["3", 0],
                         "action": "turn_left", "angle": 10.0},
              "_meta": {"title": "VMem navigate (one step per run)"}},
        "6": {"class_type": "CVS_SurfelMemoryFrames", "inputs": {"memory": ["5", 2]},
              "_meta": {"title": "The walk so far"}},
        "7": {"class_type": "CVS_SaveVideo",
              "inputs": {"images": ["6", 0], "fps": "8", "format": "h264-mp4",
                         "filename_prefix": "ConsistentVideo/vmem_walk"},
              "_meta": {"title": "Save the walk"}},
    },
    # VMem, a planned camera path rendered from one image into a video in one run.
    "vmem_planned_path_video": {
        "1": VMEM_LOADER,
        "2": DEPTH_LOADER,
        "3": ROOM,
        "4": {"class_type": "CVS_SurfelMemory", "inputs": {"name": "vmem_path", "reset": True},
              "_meta": {"title": "Path memory (new each run)"}},
        "5": {"class_type": "CVS_NavigateCameras",
              "inputs": {"actions": PATH_ACTIONS, "poses_per_action": 4, "include_start": True},
              "_meta": {"title": "Planned path (out and back)"}},
        "6": {"class_type": "CVS_VMemWalk",
              "inputs": {"model": ["1", 0], "depth_model": ["2", 0], "memory": ["4", 0], "image": ["3", 0],
                         "path": ["5", 0]},
              "_meta": {"title": "VMem walk along the path"}},
        "7": {"class_type": "CVS_SaveVideo",
              "inputs": {"images": ["6", 0], "fps": "8", "format": "h264-mp4",
                         "filename_prefix": "ConsistentVideo/vmem_path"},
              "_meta": {"title": "Save video"}},
        "8": {"class_type": "CVS_SaveCameras",
              "inputs": {"cameras": ["6", 1], "format": "cvs_json",
                         "filename_prefix": "ConsistentVideo/vmem_path_cameras"},
              "_meta": {"title": "Save cameras"}},
    },
    # VideoMV from text: 24 views around the described object, saved as a turntable video.
    "videomv_text_turntable": {
        "1": {"class_type": "CVS_ModelLoader", "inputs": {"family": "videomv_t2v"},
              "_meta": {"title": "Load VideoMV (text)"}},
        "2": {"class_type": "CVS_VideoMVTextToViews", "inputs": {"model": ["1", 0], "prompt": VIDEOMV_PROMPT},
              "_meta": {"title": "VideoMV text to 24 views"}},
        "3": {"class_type": "CVS_SaveVideo",
              "inputs": {"images": ["2", 0], "fps": "8", "format": "h264-mp4",
                         "filename_prefix": "ConsistentVideo/videomv_turntable"},
              "_meta": {"title": "Save turntable video"}},
    },
    # VideoMV from text with 3D-aware denoising: LGM's Gaussians replace x0 at three steps; the
    # views, the Gaussians (.ply) and a turntable rendered from the Gaussians are saved.
    "videomv_text_3d": {
        "1": {"class_type": "CVS_ModelLoader", "inputs": {"family": "videomv_t2v"},
              "_meta": {"title": "Load VideoMV (text, with LGM)"}},
        "2": {"class_type": "CVS_VideoMVTextToViews",
              "inputs": {"model": ["1", 0], "prompt": VIDEOMV_PROMPT, "denoise_3d": True},
              "_meta": {"title": "VideoMV text to 24 views (3D-aware)"}},
        "3": {"class_type": "CVS_SaveVideo",
              "inputs": {"images": ["2", 0], "fps": "8", "format": "h264-mp4",
                         "filename_prefix": "ConsistentVideo/videomv_3d_views"},
              "_meta": {"title": "Save the 24 views"}},
        "4": {"class_type": "CVS_SaveSplats",
              "inputs": {"gaussians": ["2", 3], "filename_prefix": "ConsistentVideo/videomv_3d_splats"},
              "_meta": {"title": "Save the Gaussians (.ply)"}},
        "5": {"class_type": "CVS_VideoMVOrbitCameras",
              "inputs": {"views": TURNTABLE_VIEWS, "elevation": 15.0, "distance": 2.0, "resolution": 512},
              "_meta": {"title": "Turntable cameras (same orbit, finer)"}},
        "6": {"class_type": "CVS_RenderSplats",
              "inputs": {"gaussians": ["2", 3], "cameras": ["5", 0], "background_r": 0.5, "background_g": 0.5,
                         "background_b": 0.5},
              "_meta": {"title": "Render the Gaussians"}},
        "7": {"class_type": "CVS_SaveVideo",
              "inputs": {"images": ["6", 0], "fps": "24", "format": "h264-mp4",
                         "filename_prefix": "ConsistentVideo/videomv_3d_turntable"},
              "_meta": {"title": "Save the splat turntable"}},
    },
    # VideoMV from an image: the object is cut out by its alpha and centred, then 24 views are
    # generated and saved as PNG frames with their cameras (nerfstudio transforms.json) for 3D reconstruction.
    "videomv_image_to_views": {
        "1": {"class_type": "CVS_ModelLoader", "inputs": {"family": "videomv_i2v"},
              "_meta": {"title": "Load VideoMV (image)"}},
        "2": {"class_type": "CVS_LoadImage", "inputs": {"image": "cvs_object.png"},
              "_meta": {"title": "Load object image (with alpha)"}},
        "3": {"class_type": "CVS_VideoMVPrepareImage", "inputs": {"image": ["2", 0], "mask": ["2", 1]},
              "_meta": {"title": "Centre the object on white"}},
        "4": {"class_type": "CVS_VideoMVImageToViews", "inputs": {"model": ["1", 0], "image": ["3", 0]},
              "_meta": {"title": "VideoMV image to 24 views"}},
        "5": {"class_type": "CVS_SaveVideo",
              "inputs": {"images": ["4", 0], "fps": "8", "format": "png-sequence",
                         "filename_prefix": "ConsistentVideo/videomv_views"},
              "_meta": {"title": "Save the views (PNG)"}},
        "6": {"class_type": "CVS_SaveCameras",
              "inputs": {"cameras": ["4", 1], "format": "nerfstudio_json",
                         "filename_prefix": "ConsistentVideo/videomv_views_cameras"},
              "_meta": {"title": "Save cameras (nerfstudio)"}},
    },
    # Memory-V2V: the same video re-rendered three times along overlapping paths; every turn is
    # conditioned on the earlier turns that saw the same directions.
    "memory_v2v_three_turns": _memory_v2v_three_turns(),
    # Memory-V2V long-video editing: the clip split into overlapping segments, each edited by LucyEdit
    # conditioned on the earlier edited segments (DINOv2 retrieval, the previous one first), stitched.
    "memory_v2v_edit_segments": _memory_v2v_edit_segments(),
    # VideoScene from two photos of one place: NoPoSplat -> poses -> path -> render -> one-step refine.
    "videoscene_two_photos": _videoscene_two_photos(),
    # VideoScene: Gaussian splats rendered along an eased path between two views (the coarse
    # render), then refined in one network pass; both videos are saved side by side.
    "videoscene_splats_to_video": {
        "1": VIDEOSCENE_LOADER,
        "2": {"class_type": "CVS_LoadSplats", "inputs": {"ply": "cvs_scene.ply"}, "_meta": {"title": "Load splats"}},
        "3": {"class_type": "CVS_KeyframeCameras",
              "inputs": {"keyframes": json.dumps(SPLAT_PATH), "frames_per_segment": 48, "easing": "cosine",
                         "width": 720, "height": 480, "fov_deg": 55.0},
              "_meta": {"title": "Path between two views (49 frames)"}},
        "4": {"class_type": "CVS_RenderSplats", "inputs": {"gaussians": ["2", 0], "cameras": ["3", 0]},
              "_meta": {"title": "Coarse render"}},
        "5": {"class_type": "CVS_VideoSceneRefine", "inputs": {"model": ["1", 0], "video": ["4", 0]},
              "_meta": {"title": "VideoScene refine"}},
        "6": {"class_type": "CVS_SaveVideo", "inputs": {"images": ["4", 0], "fps": "8", "format": "h264-mp4",
                                                        "filename_prefix": "ConsistentVideo/videoscene_coarse"},
              "_meta": {"title": "Save coarse render"}},
        "7": {"class_type": "CVS_SaveVideo", "inputs": {"images": ["5", 0], "fps": "8", "format": "h264-mp4",
                                                        "filename_prefix": "ConsistentVideo/videoscene_refined"},
              "_meta": {"title": "Save refined video"}},
    },
    # VideoScene on a video from any other node (here a loaded clip): any length and aspect,
    # mapped to the model's 49 frames at 480x720 and back.
    "videoscene_refine_video": {
        "1": VIDEOSCENE_LOADER,
        "2": SAMPLE,
        "3": {"class_type": "CVS_VideoSceneRefine", "inputs": {"model": ["1", 0], "video": ["2", 0]},
              "_meta": {"title": "VideoScene refine"}},
        "4": {"class_type": "CVS_SaveVideo", "inputs": {"images": ["3", 0], "fps": ["2", 3], "format": "h264-mp4",
                                                        "filename_prefix": "ConsistentVideo/videoscene_refined"},
              "_meta": {"title": "Save refined video"}},
    },
}


TEMPLATES = {
    # spec key: (file name = the title ComfyUI's template browser shows, the note shown on the canvas)
    "gvm_matte_video": ("GVM - Matte a video",
                        "**GVM: matte a clip.** Soft alpha for every frame with no first-frame mask. Saves the "
                        "matte as a grey video and the foreground with its alpha as a WebM."),
    "gvm_composite_background": ("GVM - Composite over a new background",
                                 "**GVM: matte and composite.** The clip's foreground over a new background image, "
                                 "saved as an mp4."),
    "gvm_matte_long_video_file": ("GVM - Matte a long video file",
                                  "**GVM: long videos, file to file.** Streams the video window by window (memory "
                                  "bounded by the window, not the length) and writes the matte, the foreground and a "
                                  "composite as ProRes 4444."),
    "vmem_walk_step_by_step": ("VMem - Walk step by step",
                               "**VMem: walk through a scene one action per run.** Change `action` (and `angle` or "
                               "`distance`) on the navigate node and queue again: the walk continues from the memory "
                               "file, and the whole walk so far is saved as a video each time. Set `reset` on the "
                               "memory node to start over."),
    "vmem_planned_path_video": ("VMem - Planned path to video",
                                "**VMem: a planned camera path from one image.** Walks out and back along the path "
                                "in one run; places seen before are retrieved from the surfel memory, so they look "
                                "the same on the way back. Saves the video and its cameras."),
    "videomv_text_turntable": ("VideoMV - Text to turntable",
                               "**VideoMV from text.** 24 consistent views around the described object, saved as "
                               "a turntable video."),
    "videomv_text_3d": ("VideoMV - Text to views, splats and splat turntable",
                        "**VideoMV from text with 3D-aware denoising.** At three of the 50 steps LGM turns the "
                        "current views into 3D Gaussians and their renders replace the prediction, so the 24 views "
                        "agree in 3D. Saves the views, the Gaussians as a .ply, and a 72-frame turntable rendered "
                        "from the Gaussians on the same orbit. Needs LGM's weights (lgm_big.* in the checkpoint, or "
                        "model.safetensors from the release zip)."),
    "videomv_image_to_views": ("VideoMV - Image to 24 views",
                               "**VideoMV from one image.** The object is cut out by its alpha and centred on "
                               "white, then 24 views are generated and saved as PNG frames with their cameras "
                               "(nerfstudio transforms.json) for 3D reconstruction."),
    "memory_v2v_three_turns": ("Memory-V2V - Three re-render turns",
                               "**Memory-V2V: three re-render turns of one video.** Each turn follows another "
                               "camera path; every turn is conditioned on the earlier turns that saw the same "
                               "directions, retrieved from the video memory."),
    "memory_v2v_edit_segments": ("Memory-V2V - Edit a long video in segments",
                                 "**Memory-V2V: text editing of a long video.** The clip is split into overlapping "
                                 "17-frame segments; LucyEdit edits them in order, each conditioned on the earlier "
                                 "edited segments that look most alike (the previous one always first), so the edit "
                                 "stays the same along the video; the segments are stitched with cross-fades. Set "
                                 "`run` to 'next segment' to edit one segment per queue run."),
    "videoscene_splats_to_video": ("VideoScene - Splats to video",
                                   "**VideoScene from Gaussian splats.** The bundled splat room rendered along an "
                                   "eased path between two views (the coarse render), then refined in one network "
                                   "pass; both videos are saved."),
    "videoscene_two_photos": ("VideoScene - Two photos to scene video",
                              "**VideoScene from two photos.** Two photos of one place (no poses needed): NoPoSplat "
                              "predicts 3D Gaussians and each photo's camera is found from them (PnP, then "
                              "refinement); the camera moves from one view to the other, the Gaussians are rendered "
                              "along the way, and VideoScene turns that coarse render into a consistent video in one "
                              "network pass. The Gaussians are saved as a .ply too."),
    "videoscene_refine_video": ("VideoScene - Refine a video",
                                "**VideoScene on any video.** A video from another node (here the sample clip) "
                                "refined in one pass: any length and aspect, mapped to the model's 49 frames at "
                                "480x720 and back."),
}


def build() -> dict[str, dict]:
    """The UI-format workflows by file stem (the template's title)."""
    from consistent_video import NODE_CLASS_MAPPINGS
    from consistent_video.nodes.runner.workflow_format import api_to_ui
    return {title: api_to_ui(EXAMPLES[key], NODE_CLASS_MAPPINGS, note=note) for key, (title, note) in TEMPLATES.items()}


def thumbnails() -> dict[str, "torch.Tensor"]:
    """``[H,W,3]`` pictures by file stem: input frame | what the workflow produces."""
    import sys
    import torch
    sys.path.insert(0, str(HERE.parent / "assets"))
    from make_assets import render_backdrop, render_clip
    frames, colours, alphas = render_clip()
    t = 24
    frame, colour, alpha = frames[t], colours[t], alphas[t, ..., None]
    checker = ((torch.arange(180)[:, None] // 12 + torch.arange(320)[None] // 12) % 2).float()
    checker = (0.55 + 0.3 * checker)[..., None].expand(-1, -1, 3)
    over = {"gvm_matte_video": alpha.expand(-1, -1, 3),
            "gvm_composite_background": alpha * colour + (1 - alpha) * render_backdrop(),
            "gvm_matte_long_video_file": alpha * colour + (1 - alpha) * checker}
    pictures = {name: torch.cat([frame, torch.ones(180, 4, 3), right], dim=1) for name, right in over.items()}
    # VMem: the starting image | a top view of the cameras the workflow walks through
    from consistent_video.nodes.cameras import trajectories
    from consistent_video.nodes.cameras.preview import render_camera_preview
    from make_assets import render_room
    room = render_room()
    walks = {"vmem_walk_step_by_step": "turn_left 10, turn_left 10, move_forward 0.5, turn_right 20",
             "vmem_planned_path_video": PATH_ACTIONS}
    for name, actions in walks.items():
        cams = trajectories.navigate(trajectories.parse_actions(actions), 4, include_start=True)
        preview = render_camera_preview(cams, 320, 180, "top")[0]
        pictures[name] = torch.cat([room, torch.ones(180, 4, 3), preview], dim=1)
    # VideoMV: the input (prompt card / object on white) | a side view of the 24-view orbit
    from consistent_video.videomv_nodes.pipeline import orbit_cameras
    from consistent_video.videomv_nodes.prepare import prepare_object_image
    from make_assets import render_object
    rgb, alpha = render_object()
    obj = prepare_object_image(rgb, alpha, size=180, object_size=140)
    card = _prompt_card(VIDEOMV_PROMPT, 180, 180)
    for name, left, elevation, distance in (("videomv_text_turntable", card, 15.0, 2.0),
                                            ("videomv_text_3d", card, 15.0, 2.0),
                                            ("videomv_image_to_views", obj, 5.0, 1.7)):
        orbit = render_camera_preview(orbit_cameras(24, elevation, distance), 320, 180, "perspective")[0]
        pictures[name] = torch.cat([left, torch.ones(180, 4, 3), orbit], dim=1)
    # Memory-V2V: the sample clip | the three turns' camera paths from above
    from consistent_video.nodes.cameras import formats as camera_formats
    paths = [trajectories.keyframe_path(camera_formats.keyframes_from_text(json.dumps(k), 320, 180, 54.0), 40)
             for k in V2V_PATHS.values()]
    from consistent_video.nodes.cameras.geometry import CameraBatch
    preview = render_camera_preview(CameraBatch.cat(paths), 320, 180, "top", frustum_size=0.15)[0]
    pictures["memory_v2v_three_turns"] = torch.cat([frame, torch.ones(180, 4, 3), preview], dim=1)
    pictures["memory_v2v_edit_segments"] = torch.cat([frame, torch.ones(180, 4, 3), _segment_strip(frames)], dim=1)
    # VideoScene: the coarse splat render at the path's start | the path from above (or the clip)
    from make_assets import splat_scene
    from consistent_video.nodes.splats.render import render
    splat_path = trajectories.keyframe_path(camera_formats.keyframes_from_text(json.dumps(SPLAT_PATH), 320, 180, 55.0),
                                            48, "cosine")
    coarse = render(splat_scene(), splat_path[0])[0][0]
    top = render_camera_preview(splat_path, 320, 180, "top", frustum_size=0.15)[0]
    pictures["videoscene_splats_to_video"] = torch.cat([coarse, torch.ones(180, 4, 3), top], dim=1)
    pictures["videoscene_refine_video"] = torch.cat([frame, torch.ones(180, 4, 3), frames[-1]], dim=1)
    # Two photos: the two input photos side by side
    from PIL import Image
    import numpy as np
    photos = [torch.from_numpy(np.asarray(Image.open(HERE.parent / "assets" / name).convert("RGB").resize(
        (270, 180), Image.BILINEAR), dtype=np.float32) / 255.0) for name in PHOTOS]
    pictures["videoscene_two_photos"] = torch.cat([photos[0], torch.ones(180, 4, 3), photos[1]], dim=1)
    return pictures


def _segment_strip(frames: "torch.Tensor") -> "torch.Tensor":
    """``[180,320,3]``: the clip's segments as bars over a frame timeline (overlaps darker), with one
    thumbnail frame per segment."""
    import torch
    from consistent_video.memory_v2v_nodes.segments import plan_segments
    total = frames.shape[0]
    spans = plan_segments(total, *EDIT_SEGMENTS)
    out = torch.ones(180, 320, 3)
    colours = torch.tensor([[0.85, 0.35, 0.3], [0.3, 0.6, 0.85], [0.4, 0.75, 0.4], [0.9, 0.7, 0.25]])
    for i, (start, end) in enumerate(spans):
        x0, x1 = round(10 + 300 * start / total), round(10 + 300 * end / total)
        y0 = 20 + 22 * i
        out[y0:y0 + 16, x0:x1] = colours[i % len(colours)]
        thumb = torch.nn.functional.interpolate(frames[(start + end) // 2].permute(2, 0, 1)[None], size=(36, 64),
                                                mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
        out[120:156, 10 + 78 * i:74 + 78 * i] = thumb
    return out


def _prompt_card(text: str, width: int, height: int) -> "torch.Tensor":
    """``text`` in black on white, wrapped, ``[height,width,3]``."""
    import textwrap
    import numpy as np
    import torch
    from PIL import Image, ImageDraw
    card = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(card)
    draw.multiline_text((10, 10), "prompt:\n" + "\n".join(textwrap.wrap(text, 22)), fill="black", spacing=6)
    return torch.from_numpy(np.asarray(card, dtype=np.float32) / 255.0)


def main() -> None:
    from PIL import Image
    pictures = {TEMPLATES[key][0]: picture for key, picture in thumbnails().items()}
    for name, workflow in build().items():
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(workflow, indent=2) + "\n", encoding="utf-8")
        pixels = (pictures[name].clamp(0, 1) * 255).round().byte().numpy()
        Image.fromarray(pixels).save(HERE / f"{name}.jpg", quality=90)
        print(f"wrote {path} and its .jpg thumbnail")


if __name__ == "__main__":
    main()
