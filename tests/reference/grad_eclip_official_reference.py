"""A literal transcription of the official Grad-ECLIP code, the oracle for ``grad_eclip_official``.

Transcribed line by line from github.com/Cyang-Zhao/Grad-Eclip: ``generate_emap.py`` (``attention_layer``,
``clip_encode_dense``, ``grad_eclip``, ``clip_encode_text_dense``, ``grad_eclip_text``,
``imgprocess_keepsize``, the ``__main__`` short-side cap) and ``grad_eclip_image.ipynb`` (the n-layer
``clip_encode_dense(x, n)``, ``sim_qk`` and the per-layer-ReLU ``grad_eclip``). Slow, unvectorised,
sequence-first (LND) as the original. Deviations, all mechanical:

- the global ``clipmodel`` is a parameter, and it is ``OpenAIView``: an OpenAI-layout view of a
  transformers ``CLIPModel`` (``in_proj_weight`` = [W_q; W_k; W_v], ``proj`` = W^T, ...). Its blocks run
  the model's OWN layers for the unchanged blocks (``resblocks[:-n]``); the transcription reaches into
  ``ln_1``, ``attn.in_proj_*``, ``attn.out_proj``, ``mlp`` and ``ln_2`` of the recomputed ones, exactly as
  the official code does with OpenAI's modules;
- ``x.half()`` becomes ``x.to(clipmodel.dtype)`` (the CUDA model is fp16; the tests run float64);
- torchvision's ``Resize((h, w), BICUBIC)`` on a PIL image is PIL's ``resize((w, h), BICUBIC)`` (what
  torchvision calls), ``ToTensor`` + ``Normalize`` are written out;
- the ``__main__`` loop's ``grad_eclip(c, k_out, v, att_output, map_size)`` call passes five arguments to a
  six-parameter function (it cannot run as published); the transcription calls it as defined,
  ``grad_eclip(c, q_out, k_out, v, att_output, map_size)``.

Shares no code with faithclip's implementation.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------- OpenAI-layout view of a CLIPModel
class _Block(torch.nn.Module):
    """OpenAI ``ResidualAttentionBlock`` attributes over a transformers ``CLIPEncoderLayer``."""

    def __init__(self, layer, mask=None):
        super().__init__()
        self.layer = layer
        self.mask = mask
        self.ln_1 = layer.layer_norm1
        self.ln_2 = layer.layer_norm2
        attn = layer.self_attn
        self.attn = SimpleNamespace(
            in_proj_weight=torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], dim=0),
            in_proj_bias=torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias], dim=0),
            out_proj=attn.out_proj,
        )
        self.mlp = layer.mlp  # c_fc -> gelu -> c_proj

    def forward(self, x):  # x: LND; the model's own, unchanged block
        mask = None if self.mask is None else self.mask[None, None]
        return self.layer(x.permute(1, 0, 2), mask).permute(1, 0, 2)


class OpenAIView:
    def __init__(self, model):
        vm, tm = model.vision_model, model.text_model
        self.dtype = model.logit_scale.dtype
        self.visual = SimpleNamespace(
            conv1=vm.embeddings.patch_embedding,
            class_embedding=vm.embeddings.class_embedding,
            positional_embedding=vm.embeddings.position_embedding.weight,
            ln_pre=vm.pre_layrnorm,
            transformer=SimpleNamespace(resblocks=[_Block(l) for l in vm.encoder.layers],
                                        width=vm.config.hidden_size),
            ln_post=vm.post_layernorm,
            proj=model.visual_projection.weight.T,
            input_resolution=vm.config.image_size,
        )
        self.context_length = tm.config.max_position_embeddings
        mask = self.build_attention_mask().to(self.dtype)
        self.token_embedding = tm.embeddings.token_embedding
        self.positional_embedding = tm.embeddings.position_embedding.weight
        self.transformer = SimpleNamespace(resblocks=[_Block(l, mask) for l in tm.encoder.layers])
        self.ln_final = tm.final_layer_norm
        self.text_projection = model.text_projection.weight.T
        self.model = model

    def build_attention_mask(self):
        mask = torch.empty(self.context_length, self.context_length)
        mask.fill_(float("-inf"))
        mask.triu_(1)
        return mask

    def encode_image(self, pixels):
        return self.model.get_image_features(pixel_values=pixels).pooler_output


# ---------------------------------------------------------------- generate_emap.py
def imgprocess_keepsize(img, patch_size=[16, 16], scale_factor=1):
    w, h = img.size
    ph, pw = patch_size
    nw = int(w * scale_factor / pw + 0.5) * pw
    nh = int(h * scale_factor / ph + 0.5) * ph

    img = img.resize((nw, nh), Image.BICUBIC).convert("RGB")  # Resize((nh, nw), BICUBIC)
    x = torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1) / 255.0  # ToTensor
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)  # Normalize


def main_loop_resize(img):
    w, h = img.size
    # in case there is too large image
    if min(w, h) > 640:
        scale = min(w, h) / 640
        hs = int(h / scale)
        ws = int(w / scale)
        img = img.resize((ws, hs))
    return img


def attention_layer(q, k, v, num_heads=1, attn_mask=None):
    "Compute 'Scaled Dot Product Attention'"
    tgt_len, bsz, embed_dim = q.shape
    head_dim = embed_dim // num_heads
    scaling = float(head_dim) ** -0.5
    q = q * scaling

    q = q.contiguous().view(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    attn_output_weights = torch.bmm(q, k.transpose(1, 2))
    if attn_mask is not None:
        attn_output_weights += attn_mask
    attn_output_weights = F.softmax(attn_output_weights, dim=-1)
    attn_output_heads = torch.bmm(attn_output_weights, v)
    assert list(attn_output_heads.size()) == [bsz * num_heads, tgt_len, head_dim]
    attn_output = attn_output_heads.transpose(0, 1).contiguous().view(tgt_len, bsz, embed_dim)
    attn_output_weights = attn_output_weights.view(bsz, num_heads, tgt_len, -1)
    attn_output_weights = attn_output_weights.sum(dim=1) / num_heads
    return attn_output, attn_output_weights


def clip_encode_dense(clipmodel, x):
    vision_width = clipmodel.visual.transformer.width
    vision_heads = vision_width // 64
    clip_inres = clipmodel.visual.input_resolution
    clip_ksize = clipmodel.visual.conv1.kernel_size

    # modified from CLIP
    x = x.to(clipmodel.dtype)  # official: x.half()
    x = clipmodel.visual.conv1(x)
    feah, feaw = x.shape[-2:]

    x = x.reshape(x.shape[0], x.shape[1], -1)
    x = x.permute(0, 2, 1)
    class_embedding = clipmodel.visual.class_embedding.to(x.dtype)

    x = torch.cat([class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]).to(x), x], dim=1)

    pos_embedding = clipmodel.visual.positional_embedding.to(x.dtype)
    tok_pos, img_pos = pos_embedding[:1, :], pos_embedding[1:, :]
    pos_h = clip_inres // clip_ksize[0]
    pos_w = clip_inres // clip_ksize[1]
    assert img_pos.size(0) == (pos_h * pos_w), f"the size of pos_embedding ({img_pos.size(0)}) does not match resolution shape pos_h ({pos_h}) * pos_w ({pos_w})"
    img_pos = img_pos.reshape(1, pos_h, pos_w, img_pos.shape[1]).permute(0, 3, 1, 2)
    img_pos = torch.nn.functional.interpolate(img_pos, size=(feah, feaw), mode='bicubic', align_corners=False)
    img_pos = img_pos.reshape(1, img_pos.shape[1], -1).permute(0, 2, 1)
    pos_embedding = torch.cat((tok_pos[None, ...], img_pos), dim=1)
    x = x + pos_embedding
    x = clipmodel.visual.ln_pre(x)

    x = x.permute(1, 0, 2)  # NLD -> LND
    x_in = torch.nn.Sequential(*clipmodel.visual.transformer.resblocks[:-1])(x)

    ##################
    # LastTR.attention
    targetTR = clipmodel.visual.transformer.resblocks[-1]
    x_before_attn = targetTR.ln_1(x_in)

    linear = torch._C._nn.linear
    q, k, v = linear(x_before_attn, targetTR.attn.in_proj_weight, targetTR.attn.in_proj_bias).chunk(3, dim=-1)
    attn_output, attn = attention_layer(q, k, v, 1)  # vision_heads
    x_after_attn = linear(attn_output, targetTR.attn.out_proj.weight, targetTR.attn.out_proj.bias)

    x = x_after_attn + x_in
    x_out = x + targetTR.mlp(targetTR.ln_2(x))

    x = x_out.permute(1, 0, 2)  # LND -> NLD
    x = clipmodel.visual.ln_post(x)
    x = x @ clipmodel.visual.proj

    ## ==== get lastv ==============
    with torch.no_grad():
        qkv = torch.stack((q, k, v), dim=0)
        qkv = linear(qkv, targetTR.attn.out_proj.weight, targetTR.attn.out_proj.bias)
        q_out, k_out, v_out = qkv[0], qkv[1], qkv[2]

        v_final = v_out + x_in
        v_final = v_final + targetTR.mlp(targetTR.ln_2(v_final))
        v_final = v_final.permute(1, 0, 2)
        v_final = clipmodel.visual.ln_post(v_final)
        v_final = v_final @ clipmodel.visual.proj
    ##############

    return x, v_final[:, 1:], x_in, v, q_out, k_out, attn, attn_output, (feah, feaw)


def clip_encode_text_dense(clipmodel, text, n):
    x = clipmodel.token_embedding(text).type(clipmodel.dtype)  # [batch_size, n_ctx, d_model]
    attn_mask = clipmodel.build_attention_mask().to(dtype=x.dtype, device=x.device)
    x = x + clipmodel.positional_embedding.type(clipmodel.dtype)
    x = x.permute(1, 0, 2)  # NLD -> LND
    x_in = torch.nn.Sequential(*clipmodel.transformer.resblocks[:-n])(x)

    #####################
    attns = []
    atten_outs = []
    vs = []
    q_outs = []
    k_outs = []
    for TR in clipmodel.transformer.resblocks[-n:]:
        x = TR.ln_1(x_in)
        linear = torch._C._nn.linear
        q, k, v = linear(x, TR.attn.in_proj_weight, TR.attn.in_proj_bias).chunk(3, dim=-1)
        attn_output, attn = attention_layer(q, k, v, 1, attn_mask=attn_mask)  # transformer_heads=8
        attns.append(attn)
        atten_outs.append(attn_output)
        vs.append(v)
        x_after_attn = linear(attn_output, TR.attn.out_proj.weight, TR.attn.out_proj.bias)
        x = x_after_attn + x_in
        x = x + TR.mlp(TR.ln_2(x))
        x_in = x

        with torch.no_grad():
            qkv = torch.stack((q, k, v), dim=0)
            qkv = linear(qkv, TR.attn.out_proj.weight, TR.attn.out_proj.bias)
            q_out, k_out, v_out = qkv[0], qkv[1], qkv[2]
            q_outs.append(q_out)
            k_outs.append(k_out)

    x = x.permute(1, 0, 2)  # LND -> NLD
    x = clipmodel.ln_final(x).type(clipmodel.dtype)

    # x.shape = [batch_size, n_ctx, transformer.width]
    # take features from the eot embedding (eot_token is the highest number in each sequence)
    x = x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ clipmodel.text_projection

    return x, (q_outs, k_outs, vs), attns, atten_outs


def grad_eclip_text(c, q_outs, k_outs, lastvs, attn_outputs, eos_position, withksim=True):
    ## gradient on last attention output
    tmp_maps = []
    for q_out, k_out, lastv, attn_output in zip(q_outs, k_outs, lastvs, attn_outputs):
        grad = torch.autograd.grad(
            c,
            attn_output,
            retain_graph=True)[0]
        grad_cls = grad[eos_position, 0, :]
        # just use the gradient on the cls token position
        if withksim:
            q_cls = q_out[eos_position, 0, :]
            k_patch = k_out[:, 0, :]
            q_cls = F.normalize(q_cls, dim=-1)
            k_patch = F.normalize(k_patch, dim=-1)
            cosine_qk = (q_cls * k_patch).sum(-1)
            cosine_qk = (cosine_qk - cosine_qk.min()) / (cosine_qk.max() - cosine_qk.min())
            tmp_maps.append((grad_cls * lastv[:, 0, :] * cosine_qk[:, None]).sum(-1))
        else:
            tmp_maps.append((grad_cls * lastv[:, 0, :]).sum(-1))
    # grad_output*attn*v --> map
    emap_lastv = (F.relu_(torch.stack(tmp_maps, dim=0).sum(0)))  # * cosine_qk[:,None]
    emap = emap_lastv[1:eos_position].flatten()
    emap = emap / emap.sum()

    return emap


def grad_eclip(c, q_out, k_out, v, att_output, map_size, withksim=True):
    D = k_out.shape[-1]
    ## gradient on last attention output
    grad = torch.autograd.grad(
        c,
        att_output,
        retain_graph=True)[0]
    grad = grad.detach()
    grad_cls = grad[:1, 0, :]
    if withksim:
        q_cls = q_out[:1, 0, :]
        k_patch = k_out[1:, 0, :]
        q_cls = F.normalize(q_cls, dim=-1)
        k_patch = F.normalize(k_patch, dim=-1)
        cosine_qk = (q_cls * k_patch).sum(-1)
        cosine_qk = (cosine_qk - cosine_qk.min()) / (cosine_qk.max() - cosine_qk.min())
        emap_lastv = F.relu_((grad_cls * v[1:, 0, :] * cosine_qk[:, None]).detach().sum(-1))
    else:
        emap_lastv = F.relu_((grad_cls * v[1:, 0, :]).detach().sum(-1))
    return emap_lastv.reshape(*map_size)


# ---------------------------------------------------------------- grad_eclip_image.ipynb (n layers, raw q, k)
def clip_encode_dense_n(clipmodel, x, n):
    clip_inres = clipmodel.visual.input_resolution
    clip_ksize = clipmodel.visual.conv1.kernel_size
    # modified from CLIP
    x = x.to(clipmodel.dtype)  # official: x.half()
    x = clipmodel.visual.conv1(x)
    feah, feaw = x.shape[-2:]

    x = x.reshape(x.shape[0], x.shape[1], -1)
    x = x.permute(0, 2, 1)
    class_embedding = clipmodel.visual.class_embedding.to(x.dtype)
    x = torch.cat([class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]).to(x), x], dim=1)

    ## scale position embedding as the image w-h ratio
    pos_embedding = clipmodel.visual.positional_embedding.to(x.dtype)
    tok_pos, img_pos = pos_embedding[:1, :], pos_embedding[1:, :]
    pos_h = clip_inres // clip_ksize[0]
    pos_w = clip_inres // clip_ksize[1]
    img_pos = img_pos.reshape(1, pos_h, pos_w, img_pos.shape[1]).permute(0, 3, 1, 2)
    img_pos = torch.nn.functional.interpolate(img_pos, size=(feah, feaw), mode='bicubic', align_corners=False)
    img_pos = img_pos.reshape(1, img_pos.shape[1], -1).permute(0, 2, 1)
    pos_embedding = torch.cat((tok_pos[None, ...], img_pos), dim=1)
    x = x + pos_embedding
    x = clipmodel.visual.ln_pre(x)

    x = x.permute(1, 0, 2)  # NLD -> LND
    x = torch.nn.Sequential(*clipmodel.visual.transformer.resblocks[:-n])(x)

    attns = []
    atten_outs = []
    vs = []
    qs = []
    ks = []
    for TR in clipmodel.visual.transformer.resblocks[-n:]:
        x_in = x
        x = TR.ln_1(x_in)
        linear = torch._C._nn.linear
        q, k, v = linear(x, TR.attn.in_proj_weight, TR.attn.in_proj_bias).chunk(3, dim=-1)
        attn_output, attn = attention_layer(q, k, v, 1)  # vision_heads=1
        attns.append(attn)
        atten_outs.append(attn_output)
        vs.append(v)
        qs.append(q)
        ks.append(k)

        x_after_attn = linear(attn_output, TR.attn.out_proj.weight, TR.attn.out_proj.bias)
        x = x_after_attn + x_in
        x = x + TR.mlp(TR.ln_2(x))

    x = x.permute(1, 0, 2)  # LND -> NLD
    x = clipmodel.visual.ln_post(x)
    x = x @ clipmodel.visual.proj
    return x, x_in, vs, qs, ks, attns, atten_outs, (feah, feaw)


def sim_qk(q, k):
    q_cls = F.normalize(q[:1, 0, :], dim=-1)
    k_patch = F.normalize(k[1:, 0, :], dim=-1)

    cosine_qk = (q_cls * k_patch).sum(-1)
    cosine_qk_max = cosine_qk.max(dim=-1, keepdim=True)[0]
    cosine_qk_min = cosine_qk.min(dim=-1, keepdim=True)[0]
    cosine_qk = (cosine_qk - cosine_qk_min) / (cosine_qk_max - cosine_qk_min)
    return cosine_qk


def grad_eclip_notebook(c, qs, ks, vs, attn_outputs, map_size):
    ## gradient on last attention output
    tmp_maps = []
    for q, k, v, attn_output in zip(qs, ks, vs, attn_outputs):
        grad = torch.autograd.grad(
            c,
            attn_output,
            retain_graph=True)[0]

        grad_cls = grad[:1, 0, :]
        v_patch = v[1:, 0, :]
        cosine_qk = sim_qk(q, k).reshape(-1)
        tmp_maps.append((grad_cls * v_patch * cosine_qk[:, None]).sum(-1))

    emap = F.relu_(torch.stack(tmp_maps, dim=0)).sum(0)
    return emap.reshape(*map_size)


# ---------------------------------------------------------------- drivers (the official call sequences)
def official_image_map(model, img, text_embedding, patch, cap=True):
    """``__main__`` of generate_emap.py for one PIL image and normalised text embeddings ``(K, P)``."""
    clipmodel = OpenAIView(model)
    if cap:
        img = main_loop_resize(img)
    img_keepsized = imgprocess_keepsize(img, patch_size=[patch, patch]).unsqueeze(0)
    outputs, v_final, last_input, v, q_out, k_out, attn, att_output, map_size = clip_encode_dense(clipmodel, img_keepsized)
    img_embedding = F.normalize(outputs[:, 0], dim=-1)
    cosines = (img_embedding @ text_embedding.T)[0]
    return torch.stack([grad_eclip(c, q_out, k_out, v, att_output, map_size) for c in cosines]), cosines


def notebook_image_map(model, img, text_embedding, patch, n):
    """grad_eclip_image.ipynb: keep-size input (no cap), ``n`` one-head layers, raw q and k."""
    clipmodel = OpenAIView(model)
    img_preprocessed_k = imgprocess_keepsize(img, patch_size=[patch, patch]).unsqueeze(0)
    outputs, last_feat, vs, qs, ks, attns, atten_outs, map_size = clip_encode_dense_n(clipmodel, img_preprocessed_k, n)
    img_embedding = F.normalize(outputs[:, 0], dim=-1)
    cosine = (img_embedding @ text_embedding.T)[0]
    return torch.stack([grad_eclip_notebook(c, qs, ks, vs, atten_outs, map_size) for c in cosine]), cosine


def official_text_map(model, text, img_embedding, n):
    """The text side: ``text`` one row ``(1, context)`` of ids padded with 0; image embedding normalised ``(1, P)``."""
    clipmodel = OpenAIView(model)
    x, (q_outs, k_outs, vs), attns, atten_outs = clip_encode_text_dense(clipmodel, text, n=n)
    text_embedding = F.normalize(x, dim=-1)
    cosine = (img_embedding @ text_embedding.T)
    eos_position = text.argmax(dim=-1)
    return grad_eclip_text(cosine[0, 0], q_outs, k_outs, vs, atten_outs, int(eos_position[0])), cosine[0, 0]
