// The packed Q-network of a DQN module and the inputs/outputs of one fused epsilon-greedy step
// (qnet.h runs it). Torch-free; pointers and sizes only.
//
// Shape legend: B batch, O obs dim, A actions, N atoms (distributional Q; 1 = expectation).
#pragma once
#include "common.h"
#include "conv_pack.h"

namespace rf {

// RLlib's FLOAT_MIN (ray.rllib.utils.torch_utils): the Q-value of a masked action.
constexpr float QNET_FLOAT_MIN = -3.4e38f;

// [conv stage ->] encoder MLP -> advantage / Q head (A * N outputs, linear) [-> value head (1 output)].
struct QNet {
    int obs_dim = 0;
    // The encoder's conv stage (null: none), the policy step's ConvStack: the observation row is
    // an H x W x C image (HWC), the MLP (or, when it is empty, the heads) reads its flattened output.
    std::shared_ptr<const ConvStack> conv;
    PackedMLP enc;         // may be empty (the heads read the observation or the conv features)
    PackedMLP af;          // A * N outputs
    bool vf_on = false;    // dueling: Q = V + A - mean(A) (N == 1; with N > 1 V cancels in the softmax)
    PackedMLP vf;
    int A = 0, N = 1;
    std::vector<float> z;  // the support [N] (N > 1)
    int max_padded() const {
        return std::max({enc.max_padded(), af.max_padded(), vf.max_padded(), NR});
    }
};

// One step: q [B, A] (masked entries QNET_FLOAT_MIN), actions [B], logp [B] = log_softmax(q)[a].
// Row r's one draw is rng_bits(key, ctr0 + r): its high 32 bits are the epsilon coin, its low
// 32 bits pick the random action among the row's valid ones.
struct QStepIO {
    const float* obs = nullptr; int64_t ldobs = 0; int B = 0;
    const uint8_t* obs_u8 = nullptr;  // uint8 observations instead of obs (conv stage only), same ldobs
    const float* feat = nullptr; int64_t ldfeat = 0;  // conv features (set inside qnet_step): read instead of obs
    const float* mask = nullptr; int64_t ldmask = 0;  // [B, A], 1 = valid, 0 = masked; nullptr: none
    double eps = 0.0;
    bool det = false;
    uint64_t key = 0, ctr0 = 0;
    float* q = nullptr;
    int64_t* act = nullptr;
    float* logp = nullptr;
};

}  // namespace rf
