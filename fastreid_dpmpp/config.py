"""Config keys of DPM++: ``add_dpmpp_config(cfg)`` extends fast-reid's defaults.

Every key is commented with the symbol it carries in the paper / SPEC. Values marked [pred] come
from the predecessors' public code (DPM, SPT, CLIP-ReID); [ours] marks our own choices.
"""
from fastreid.config import CfgNode as CN


def add_dpmpp_config(cfg):
    """Add the DPM++ keys to a fast-reid config in place (idempotent)."""
    if "VIT" in cfg.MODEL:
        return cfg
    _C = cfg

    # Random seed (detectron2 convention; fast-reid 1.4.0 has no such key): -1 = random.
    if "SEED" not in _C:
        _C.SEED = -1
    # Dataset root; "" = fast-reid's FASTREID_DATASETS environment variable (default "datasets").
    _C.DATASETS.ROOT = ""
    # Image files whose names do not follow the layout: False = stop with an error naming them, True = skip + warn.
    _C.DATASETS.SKIP_BAD_FILES = False

    # ---------------------------------------------------------------- backbone (SPEC §1)
    # fast-reid keys reused: MODEL.BACKBONE.{STRIDE_SIZE (s), SIE_COE (λ_sie), DROP_PATH_RATIO, FEAT_DIM (D)}.
    _C.MODEL.VIT = CN()
    _C.MODEL.VIT.FAMILY = "clip"            # "clip" (open_clip visual tower) or "vanilla" (timm ViT, no text branch)
    _C.MODEL.VIT.ARCH = "ViT-B-16"          # open_clip model config name (clip) / timm model name (vanilla)
    # Width/depth overrides for small CPU models (0 keeps the ARCH's value).
    _C.MODEL.VIT.WIDTH = 0                  # D, visual width
    _C.MODEL.VIT.LAYERS = 0                 # number of transformer blocks
    _C.MODEL.VIT.HEADS = 0                  # h, attention heads
    _C.MODEL.VIT.EMBED_DIM = 0              # D_t, CLIP joint (projection / text) width
    _C.MODEL.VIT.TEXT_WIDTH = 0             # text transformer width
    _C.MODEL.VIT.TEXT_LAYERS = 0            # text transformer depth
    _C.MODEL.VIT.TEXT_HEADS = 0             # text transformer heads
    _C.MODEL.VIT.WEIGHTS = ""               # local CLIP / ViT weights file; "" = random init
    # (h, w) patch grid the weights' position table was trained on (resized to this model's grid);
    # (0, 0) = infer: square if the row count is a square, else the factorisation closest to this grid's aspect
    _C.MODEL.VIT.PRETRAIN_GRID = (0, 0)
    _C.MODEL.VIT.QUICK_GELU = True          # OpenAI CLIP weights were trained with QuickGELU
    # TorchScript archive (OpenAI's .pt) that the restricted reader cannot parse: True = load it with open_clip's
    # OpenAI loader, whose torch.jit.load RUNS the archive's TorchScript code (trusted files only) [ours]
    _C.MODEL.VIT.ALLOW_TORCHSCRIPT_LOADER = False
    _C.MODEL.VIT.SIE_ENABLED = True         # side-information (camera) embedding, Eq. 2
    _C.MODEL.VIT.SIE_MODE = "cls"           # "all" tokens (paper Eq. 2) or "cls" token only (CLIP-ReID) [pred]
    # add the camera embedding at test too (TransReID / CLIP-ReID do) — False [ours]: on the validation split it pulls
    # the top-1 towards the query's own camera and lowers mAP at every LR tried (docs/RESULTS.md, Phase A)
    _C.MODEL.VIT.SIE_AT_TEST = False
    _C.MODEL.VIT.NUM_CAMERAS = 0            # rows of S; 0 = number of training cameras of the dataset
    _C.MODEL.VIT.TAPS = (2, 4, 10, 12)      # 1-based blocks whose patch tokens feed HMG / SPS [pred]
    # Fine-tuning controls [ours]: freeze the embeddings + first k blocks; layer-wise LR decay d (block i of L
    # trains at d^(L+1-i) x BASE_LR, the embeddings at d^(L+1); 1.0 = off)
    _C.MODEL.VIT.FREEZE_BLOCKS = 0
    _C.SOLVER.LAYER_DECAY = 1.0
    _C.MODEL.BACKBONE.TAP_STAGES = (1, 2, 3, 4)  # CNN (build_tapped_resnet_backbone): ResNet stages feeding HMG
    # Names of the training cameras in SIE-row order ("<dataset>_<cam>"), filled with NUM_CAMERAS from the training
    # data; () = camera c is row c. A test camera not listed (unseen in training) gets the mean of the rows, decided
    # when the model is built, with one warning per test set (data/cameras.py; measured: docs/BAD_INPUTS.md) [ours]
    _C.MODEL.VIT.TRAIN_CAMERAS = ()
    # Random patch hiding in training [ours] (modeling/patch_hiding.py): with probability PROB an image gets a random
    # rectangle of patches, AREA = (min, max) fraction of the grid, hidden from attention; 0 = off (SPEC)
    _C.MODEL.VIT.HIDE_PATCHES = CN()
    _C.MODEL.VIT.HIDE_PATCHES.PROB = 0.0
    _C.MODEL.VIT.HIDE_PATCHES.AREA = (0.1, 0.5)

    # ---------------------------------------------------------------- DPM++ model (SPEC §5)
    _C.MODEL.DPMPP = CN()
    # test descriptor: "concat" = L2[v, v_p] (CLIP-ReID, SPEC §1), "cls" = v, "bn_cls" = BN(v), "proj" = v_p,
    # "concat_bn" = [L2 BN(v), L2 v_p] / sqrt 2; masked matching acts on its v (or BN(v)) part. "concat_bn" [ours]:
    # the best space of the CLIP baseline on the validation split (docs/RESULTS.md, Phase A)
    _C.MODEL.DPMPP.DESCRIPTOR = "concat_bn"
    _C.MODEL.DPMPP.DPM_ENABLED = True       # mask-prototype branch (L_mask, masked matching) on/off
    _C.MODEL.DPMPP.HMG_ENABLED = True       # hierarchical mask generator; off = mask from the final feature map only
    _C.MODEL.DPMPP.HMG_GATES = (1, 1, 1, 1)  # g, one binary gate per tap (Eq. 20)
    _C.MODEL.DPMPP.HMG_REDUCTION = 1        # divide HMG's conv widths (2D, D, D) by r; 1 = SPEC, >1 = faster [ours]
    _C.MODEL.DPMPP.HMG_POOL = "max"         # HMG global pooling: "max" (DPM's code) or "avg" (the paper's text)
    _C.MODEL.DPMPP.MASK_SIDE = "prototype"  # where m acts: "prototype" | "feature" | "both" (Table IV)
    _C.MODEL.DPMPP.MASK_BEFORE_NORM = True  # apply m before re-normalising (Eq. 10) or after (Table IV)
    _C.MODEL.DPMPP.MASKED_PROTOTYPE = "visual"  # which prototype is masked: "visual" (P) | "text" (T) | "none" (Table VI)
    _C.MODEL.DPMPP.TEXT_PROTOTYPES = ""     # Stage I output file (T); "" = no L_coarse
    _C.MODEL.DPMPP.ALTERNATE_UPDATE = False  # DPM's two-optimiser alternating mask update (doubles cost) [ours]

    # Loss weights (fast-reid reads MODEL.LOSSES.NAME; these add the DPM++ terms)
    _C.MODEL.LOSSES.COARSE = CN()
    _C.MODEL.LOSSES.COARSE.SCALE = 1.0      # weight of L_coarse
    _C.MODEL.LOSSES.COARSE.EPSILON = 0.1    # label smoothing [pred]
    _C.MODEL.LOSSES.ID = CN()
    _C.MODEL.LOSSES.ID.SCALE = 1.0          # weight of L_id
    _C.MODEL.LOSSES.ID.EPSILON = 0.1        # label smoothing
    _C.MODEL.LOSSES.MASK = CN()
    _C.MODEL.LOSSES.MASK.SCALE = 1.0        # λ, weight of L_mask
    _C.MODEL.LOSSES.MASK.S = 30.0           # s, ArcFace scale [pred]
    _C.MODEL.LOSSES.MASK.M = 0.5            # m, angular margin (0.3 on holistic sets) [pred]
    _C.MODEL.LOSSES.MASK.EPSILON = 0.0      # label smoothing of L_mask (DPM uses none)
    _C.MODEL.LOSSES.HEM = CN()
    _C.MODEL.LOSSES.HEM.ENABLED = True      # Head Enrich Module (Eq. 18-19)
    _C.MODEL.LOSSES.HEM.SCALE = 0.1         # γ (0.01 for Occluded-REID)
    _C.MODEL.LOSSES.HEM.REDUCTION = "mean"  # over the batch: "mean" (SPEC) or "sum" (DPM's code: γ in effect B x)
    # Direct supervision of the mask [ours, not in the paper; modeling/mask_supervision.py]: BCE towards the channels
    # an occlusion changes least, w.r.t. the clean SPT anchor ("spt_pairs") or the identity prototype ("prototype")
    _C.MODEL.LOSSES.MASK_SUPERVISION = CN()
    _C.MODEL.LOSSES.MASK_SUPERVISION.ENABLED = False
    _C.MODEL.LOSSES.MASK_SUPERVISION.SOURCE = "spt_pairs"
    _C.MODEL.LOSSES.MASK_SUPERVISION.SCALE = 1.0
    _C.MODEL.LOSSES.MASK_SUPERVISION.KEEP = 0.5   # fraction of channels the target keeps

    # ---------------------------------------------------------------- Stage I: prompt learning (SPEC §2)
    _C.STAGE1 = CN()
    _C.STAGE1.N_CTX = 4                     # learnable tokens [X1..X4] per identity
    _C.STAGE1.PROMPT = "A photo of a X X X X person."
    _C.STAGE1.BASE_LR = 3.5e-4              # Adam [pred]
    _C.STAGE1.WEIGHT_DECAY = 1e-4
    _C.STAGE1.MAX_EPOCH = 100               # paper
    _C.STAGE1.WARMUP_EPOCHS = 5
    _C.STAGE1.WARMUP_FACTOR = 0.01
    _C.STAGE1.MIN_LR_FACTOR = 0.002
    _C.STAGE1.IMS_PER_BATCH = 64
    _C.STAGE1.OUTPUT = "text_prototypes.pth"  # file name under OUTPUT_DIR

    # ---------------------------------------------------------------- Stage II: SPS (SPEC §3)
    _C.STAGE2 = CN()
    _C.STAGE2.RHO = 0.3                     # ρ, target fraction of salient patches [pred]
    _C.STAGE2.BUDGET_WEIGHT = 50.0          # weight of L_budget [pred]
    _C.STAGE2.COMPLEMENT_WEIGHT = 0.1       # weight of <softmax(z), softmax(z_complement)> [pred]
    _C.STAGE2.DECISION_LR = 0.008           # SGD LR of the decision layer [pred]
    _C.STAGE2.DECISION_MOMENTUM = 0.9
    _C.STAGE2.OUTPUT = "sps_final.pth"

    # ---------------------------------------------------------------- Stage III: SPT (SPEC §4)
    _C.SPT = CN()
    _C.SPT.ENABLED = False                  # saliency-guided patch transfer (Table III "SPT")
    _C.SPT.SPS_WEIGHTS = ""                 # Stage II checkpoint (frozen)
    _C.SPT.OIOU = True                      # rank by OIoU (|Mi∧Mj|/|Mj|); False = plain IoU (Eq. 5) (Table III "OIoU")
    _C.SPT.MASK_ROLLING = True              # horizontal mask rolling for the ranking (Table III "MR")
    _C.SPT.ALPHA = 0.7                      # α, OIoU threshold [pred]
    _C.SPT.BETA = 0.7                       # β, rolled-score threshold [ours]
    _C.SPT.TOP_FRACTION = 0.1               # keep the top 10 % of the ranking as candidates
    # partner guard [ours]: a candidate's salient area must be >= this x the anchor's (0 = SPEC, no guard);
    # OIoU divides by the candidate's own area, so without it tiny partner masks score ~1 (label noise)
    _C.SPT.MIN_PARTNER_AREA = 0.0
    # where the synthesised sample keeps the anchor: "partner" = inside the partner's identity set M_j (Eq. 7,
    # SPEC); "union" [ours] = inside M_i ∨ M_j, so the partner never replaces the anchor's own identity set
    _C.SPT.KEEP = "partner"
    _C.SPT.PROB = 0.5                       # p, probability of synthesising a sample [ours]
    _C.SPT.THRESHOLD = 0.5                  # binarisation of the SPS saliency
    _C.SPT.IGNORE_PARTNER = True            # candidate-identity ignoring in CE and triplet
    _C.SPT.VIS_PERIOD = 0                   # iterations between pictures of synthesised samples (0 = first only)

    # ---------------------------------------------------------------- pipeline (tools/run_pipeline.py)
    _C.PIPELINE = CN()
    _C.PIPELINE.STAGE2_CONFIG = "sps.yml"   # Stage II config, relative to the DPM++ config's folder

    # ---------------------------------------------------------------- inference (SPEC §6)
    _C.TEST.MASKED_MATCHING = CN()
    _C.TEST.MASKED_MATCHING.ENABLED = True  # dynamic masked matching with the query's mask
    _C.TEST.MASKED_MATCHING.DISTANCE = "cosine"  # 1 - sim ("cosine") or arccos(sim) ("angular")
    # where the query's mask acts at test: "gallery" = SPEC §6 (normalize(m ⊙ ĝ)); "training" = the Table IV
    # placement of training (MODEL.DPMPP.MASK_SIDE / MASK_BEFORE_NORM, the gallery as the prototype) [ours]
    _C.TEST.MASKED_MATCHING.PLACEMENT = "gallery"
    _C.TEST.MASKED_MATCHING.BLOCK_SIZE = 4096    # gallery rows per block
    # 0 = exhaustive (blocked) masked scores; K > 0 = FAISS finds K candidates per query, then exact masked
    # re-scoring of those only (galleries too large to score exhaustively) [ours]
    _C.TEST.MASKED_MATCHING.CANDIDATES = 0
    _C.TEST.MASKED_MATCHING.INDEX = "flat"       # candidate index: "flat" | "ivf" | "ivfpq" (see tools/search.py)
    # FAISS returns CANDIDATE_FACTOR·K rows, the exact masked scores keep the best K: the index searches with the
    # masked query's direction, but the masked score's denominator differs per gallery row, so K alone can miss
    _C.TEST.MASKED_MATCHING.CANDIDATE_FACTOR = 2
    # Re-ranking (fast-reid's TEST.RERANK.{ENABLED,K1,K2,LAMBDA} plus): "jaccard" = fast-reid's formulation,
    # "kreciprocal" = Zhong et al. CVPR 2017; BLOCK_SIZE 0 = fast-reid's dense path (jaccard) / 1024 (kreciprocal).
    _C.TEST.RERANK.METHOD = "jaccard"
    _C.TEST.RERANK.BLOCK_SIZE = 0
    return cfg
