"""Literal, slow transcriptions of the two deletion/insertion protocols, used as test oracles.

- Grad-ECLIP: ``make_grids``, ``random_pixel`` / ``add_pixel``, ``delection_process`` /
  ``insertion_process`` of github.com/Cyang-Zhao/Grad-Eclip ``imagenet_eval_deletion.py`` and
  ``imagenet_eval_insertion.py``, kept line for line; the PIL round trip and CLIP preprocessing of each
  recorded image are left to the caller (the arrays are returned), and ``torch.rand`` takes a generator.
- RISE: ``gkern``, ``auc`` and ``CausalMetric.single_run`` of github.com/eclique/RISE ``evaluation.py``,
  with the model a callable returning class probabilities, the explained class given (RISE uses the
  top-1 class), no CUDA, and ``HW`` a parameter instead of the module constant ``224 * 224``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter


# ---- Grad-ECLIP -------------------------------------------------------------------------------------
def make_grids(h, w):
    shifts_x = torch.arange(0, w, 1)
    shifts_y = torch.arange(0, h, 1)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x = shift_x.reshape(-1)
    shift_y = shift_y.reshape(-1)
    grids = torch.stack((shift_x, shift_y), dim=1)
    return grids


def random_pixel(image, poses, generator):
    h, w, _ = image.shape
    random_patch = torch.rand(len(poses), 3, generator=generator) * 255.
    xs, ys = zip(*poses)
    image[ys, xs, :] = random_patch
    return image


def add_pixel(image, input_img, poses):
    xs, ys = zip(*poses)
    input_img[ys, xs, :] = image[ys, xs, :]
    return input_img


def delection_process(image, heatmap, L, cal_gap, generator):
    image_array = np.array(image).copy()
    image_array.setflags(write=1)
    h, w = heatmap.shape
    grids = make_grids(h, w)
    order = np.argsort(-heatmap.reshape(-1))
    area = h * w
    pixel_once = max(1, int(area / (2 * L)))

    del_imgs = []
    for step in range(1, L + 1):
        image_array = random_pixel(image_array, grids[order[(step - 1) * pixel_once:step * pixel_once]], generator)
        if step % cal_gap == 0:
            del_imgs.append(np.uint8(image_array).copy())
    return del_imgs


def insertion_process(image, heatmap, L, cal_gap):
    image_array = np.array(image).copy()
    h, w = heatmap.shape
    grids = make_grids(h, w)
    order = np.argsort(-heatmap.reshape(-1))
    area = h * w
    pixel_once = max(1, int(area / (2 * L)))
    input_img = np.zeros(image_array.shape)

    insert_imgs = []
    for step in range(1, L + 1):
        input_img = add_pixel(image_array, input_img, grids[order[(step - 1) * pixel_once:step * pixel_once]])
        if step % cal_gap == 0:
            insert_imgs.append(np.uint8(input_img).copy())
    return insert_imgs


# ---- RISE ---------------------------------------------------------------------------------------------
def gkern(klen, nsig):
    """Returns a Gaussian kernel array.
    Convolution with it results in image blurring."""
    # create nxn zeros
    inp = np.zeros((klen, klen))
    # set element at the middle to one, a dirac delta
    inp[klen // 2, klen // 2] = 1
    # gaussian-smooth the dirac, resulting in a gaussian filter mask
    k = gaussian_filter(inp, nsig)
    kern = np.zeros((3, 3, klen, klen))
    kern[0, 0] = k
    kern[1, 1] = k
    kern[2, 2] = k
    return torch.from_numpy(kern.astype("float32"))


def auc(arr):
    """Returns normalized Area Under Curve of the array."""
    return (arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1)


class CausalMetric:
    def __init__(self, model, mode, step, substrate_fn, HW):
        assert mode in ["del", "ins"]
        self.model = model
        self.mode = mode
        self.step = step
        self.substrate_fn = substrate_fn
        self.HW = HW

    def single_run(self, img_tensor, explanation, c):
        HW = self.HW
        n_steps = (HW + self.step - 1) // self.step

        if self.mode == "del":
            start = img_tensor.clone()
            finish = self.substrate_fn(img_tensor)
        elif self.mode == "ins":
            start = self.substrate_fn(img_tensor)
            finish = img_tensor.clone()

        scores = np.empty(n_steps + 1)
        # Coordinates of pixels in order of decreasing saliency
        salient_order = np.flip(np.argsort(explanation.reshape(-1, HW), axis=1), axis=-1)
        for i in range(n_steps + 1):
            pred = self.model(start)
            scores[i] = pred[0, c]
            if i < n_steps:
                coords = salient_order[:, self.step * i:self.step * (i + 1)]
                start.cpu().numpy().reshape(1, 3, HW)[0, :, coords] = finish.cpu().numpy().reshape(1, 3, HW)[0, :, coords]
        return scores
